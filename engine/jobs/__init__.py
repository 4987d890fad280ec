"""Cortex's BatchAPI: job submissions, their durable state, and the workers that run them."""
