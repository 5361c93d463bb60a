//! Deleting a committed checkpoint or savepoint on an operator's request (being built).
