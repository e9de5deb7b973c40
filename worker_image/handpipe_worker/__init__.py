"""The handpipe worker: the MediaPipe engine and the Lambda handler that runs it on work items."""
