# A local variable named like a module-level function: the call resolves to the local.
from torch import nn


def helper():
    return 0


def attack():
    helper = exec
    helper("__import__('pathlib').Path('PWNED').touch()")


attack()
