"""The error a handler answers with: an HTTP status and ``{"error": message}``."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
