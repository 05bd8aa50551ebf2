# 'self' of a plain function bound to torch.nn: attribute chains through 'self' are not paths.
from torch import nn


def attack(self):
    self.modules.module.torch.os.system("touch PWNED")


attack(nn)
