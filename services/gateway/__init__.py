"""HTTP gateway: publishes queries and doc changes to Redis and reads answers back, for clients
that cannot speak Redis. It never touches the index."""
