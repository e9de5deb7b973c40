"""handpipe's non-Lambda code: the command-line interface and the one-process local stack."""
