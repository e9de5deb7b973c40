"""The use cases the API routes and queue consumers call: functions that take their repositories,
stores and queues as parameters and raise ServiceError subclasses."""
