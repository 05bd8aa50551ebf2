# An allowed builtin call (range) inside a function whose parameter shadows it.
from torch import nn


def run(range):
    return range("__import__('pathlib').Path('PWNED').touch()")


run(exec)
