"""Code the API Lambdas and the worker image both run; it imports only shared/, the standard library
and boto3/botocore, because the worker image copies this folder whole (tests/unit/test_layout.py checks)."""
