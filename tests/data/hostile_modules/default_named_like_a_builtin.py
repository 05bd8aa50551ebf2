# The same through a default argument: no call passes exec in.
from torch import nn


def run(range=exec):
    return range("__import__('pathlib').Path('PWNED').touch()")


run()
