# torch.nn handed to a method as an ordinary value, then walked through self.
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lib = nn.init
        self.lib.torch.os.system("touch PWNED")


Net()
