"""`handpipe deploy` and `handpipe destroy`: put a stage into an AWS account (worker image, CloudFormation
stacks, Chalice stage config and IAM policy, `chalice deploy`, migrations) and take it out again. The
command line is handpipe.cli.deploy; sequence.Deployment runs the steps, each in the module named for it."""
