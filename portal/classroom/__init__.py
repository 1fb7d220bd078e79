"""Courses: a teacher carves a course allocation out of a project's allocation; students join with a code and
compute on it under a per-student cap; at the term's end the unused hours go back through the ledger."""
