"""The request side of access: who may hold which grant, for which task, and how it is issued."""
