"""What the API asks for, without HTTP: validate, record, enqueue, and the read views."""
