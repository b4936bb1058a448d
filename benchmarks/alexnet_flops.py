"""Client share of a training step's FLOPs, split after the first conv block: this project's two
AlexNets (measure/flops.py) and torchvision's AlexNet on 224x224 RGB input (torch's
FlopCounterMode), beside the paper's Table 4 ratio (0.031 PFLOPs per split client against FL's
0.588 per client and CL's 2.944). Prints one table; issue 29 item 4.

  .venv/bin/python -m benchmarks.alexnet_flops
"""

from __future__ import annotations

import sys

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import alexnet

from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.analysis.paper import paper_reference
from sglr_ray.measure.flops import bottom_step_flops, full_step_flops


def torchvision_share() -> tuple[int, int]:
    """(client, whole-model) FLOPs of one training step of one 224x224 RGB sample."""
    model = alexnet(num_classes=10)
    x = torch.zeros(1, 3, 224, 224)

    def step(module: torch.nn.Module) -> int:
        with FlopCounterMode(display=False) as counter:
            out = module(x)
            if out.dim() == 2:
                F.cross_entropy(out, torch.zeros(1, dtype=torch.long)).backward()
            else:
                out.backward(torch.ones_like(out))
        return counter.get_total_flops()

    return step(model.features[:3]), step(model)


def main() -> int:
    rows = [
        {"model": name, "client_flops": bottom_step_flops(name, 1), "whole_flops": full_step_flops(name, 1)}
        for name in ("alexnet", "alexnet-paper")
    ]
    client, whole = torchvision_share()
    rows.append({"model": "torchvision alexnet, 224x224 RGB", "client_flops": client, "whole_flops": whole})
    table = pd.DataFrame(rows).set_index("model")
    table["client_share_%"] = 100 * table.client_flops / table.whole_flops
    table["vs_cl_%"] = table["client_share_%"] / 5  # CL trains on all 5 clients' data
    pflops = paper_reference()["table4"].pflops_per_client
    paper = {
        "client_share_%": 100 * pflops["psl"] / pflops["fl"],
        "vs_cl_%": 100 * pflops["psl"] / pflops["cl"],
    }
    table.loc["the paper (Table 4, PFLOPs per client)", list(paper)] = list(paper.values())
    print(markdown_table(table.astype({"client_flops": "Int64", "whole_flops": "Int64"}), decimals=3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
