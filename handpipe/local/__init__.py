"""The whole stack on one machine (moto for S3 and SQS, SQLite or MariaDB, Chalice's local server, worker
processes): what `handpipe up`, the demo, the tests and the bench scripts run instead of AWS."""
