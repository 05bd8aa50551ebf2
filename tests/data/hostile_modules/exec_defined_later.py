# The example: the call runs the builtin at import; the later def made it "allowed".
from torch import nn

exec("__import__('pathlib').Path('PWNED').touch()")


def exec(code):
    return code
