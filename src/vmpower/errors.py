"""One error type for bad input: the CLI prints it as a single line naming the file and the problem."""

from __future__ import annotations


class InputError(Exception):
    """Bad input data. ``str(err)`` is ``"<path>: <problem>"`` on one line."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # keep it to one line
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # pickling/copying (e.g. from a process pool) keeps the two parts
        return (type(self), (self.path, self.problem))
