"""Fibonacci numbers: the example for `codegen-lsp complete --file examples/fib.py`.

With no --line, the completion continues the file at its end, in the body of `fib`.
"""


def fib(n):
    """Return the n-th Fibonacci number: fib(0) == 0, fib(1) == 1."""
    if n < 2:
        return n
