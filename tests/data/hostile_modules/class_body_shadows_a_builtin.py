# A class body binds a builtin's name and calls it while the class is defined.
from torch import nn


class Net(nn.Module):
    isinstance = exec
    isinstance("__import__('pathlib').Path('PWNED').touch()")
