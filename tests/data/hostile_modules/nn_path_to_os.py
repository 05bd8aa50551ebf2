# An attribute chain from an allowed import into os (refused before this issue; kept).
from torch import nn

nn.modules.module.torch.os.system("touch PWNED")
