"""Isolation backends and runtime executors behind one Executor interface."""
