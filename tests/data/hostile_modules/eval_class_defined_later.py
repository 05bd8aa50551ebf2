# A class named like a builtin, defined after the call.
from torch import nn

eval("__import__('pathlib').Path('PWNED').touch()")


class eval(nn.Module):
    expansion = 1
