"""Every run setting, declared once: type, default, help, range, and whether it changes results.

`RunConfig` is the one declaration. The CLI's flags and help, config-file
checks, the runs table's columns, a run's identity (`run_key`) and the
analysis's grouping key (`cell_key`) all derive from its fields, so a new
setting is one line here.

Every check runs before any data is loaded or any Ray work starts, and every
error names the setting (as its CLI flag) and the value that was refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglr_ray import config_checks as checks
from sglr_ray.datasets import dataset_info
from sglr_ray.declared import identity_name, shipped_file
from sglr_ray.methods import METHODS, Method, MethodNotFoundError, get_method, method_file
from sglr_ray.methods.phase import Phase, PhaseError
from sglr_ray.methods.sglr import split_lr
from sglr_ray.nodes.models import ModelError, ModelParts, resolve_cut
from sglr_ray.nodes.optim import LrSchedule
from sglr_ray.privacy import check as check_privacy
from sglr_ray.privacy import install as install_privacy
from sglr_ray.privacy import parse_attacks
from sglr_ray.settings import ConfigError, MethodOption, checked_value, flag, setting
from sglr_ray.systems.devices import DeviceProfiles, load_profiles

# Each built-in method's own settings (methods/*.py `options`), one RunConfig field each.
METHOD_OPTIONS: dict[str, MethodOption] = {n: o for m in METHODS.values() for n, o in m.options.items()}

DEFAULT_ALPHA = 0.5  # the paper's Table 4 SGLR setting
DEFAULT_PHI = 0.5
MAX_SEED = 2**32 - 1  # numpy's seed range


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one experiment."""

    # --- what is trained -------------------------------------------------------------
    method: str = setting(
        "sglr", "learning method, or FILE.py:NAME for your own (see examples/custom_method.py)"
    )
    model: str = setting(
        "alexnet", "split model: alexnet, resnet16, or your own as FILE.py:NAME or package.module:NAME, "
        "where NAME(input_shape, num_classes) returns an nn.Sequential to cut or a (bottom, top) pair "
        "(see examples/custom_model.py)",
    )  # fmt: skip
    cut: str = setting(
        "", "where the model is cut: K puts its first K top-level children on the client; U-shaped "
        "methods (usl) take K1,K2 (head = children before K1, tail = children from K2); default: the "
        "model's own cut (alexnet 1, resnet16 3; usl's tail: the last child)", identity=False,
    )  # fmt: skip
    # identity=False: a cut changes the numbers, but it enters the identity through `model`
    # (see identity()), so every run at a model's own cut keeps the key it had before --cut.
    dataset: str = setting(
        "fashion-mnist", "dataset: fashion-mnist, cifar10, cifar100, synthetic (for benchmarks and tests), "
        "or your own as FILE.py:NAME, where NAME() returns (train, test) (see examples/custom_dataset.py)",
    )  # fmt: skip
    partition: str = setting(
        "iid", "client partitions: iid (class-stratified) or dirichlet (label skew)",
        choices=("iid", "dirichlet"),
    )  # fmt: skip
    dirichlet_beta: float = setting(
        0.5, "Dirichlet concentration for --partition dirichlet (smaller = more skew)", low=0, low_open=True
    )
    clients: int = setting(5, "number of clients C", low=1)
    samples_per_client: int = setting(1000, "training samples in each client's partition", low=1)
    batch_size: int = setting(8, "batch size per client per iteration (b)", low=1)
    epochs: int = setting(2, "training epochs", low=1)
    alpha: float | None = setting(
        None, f"SplitLr exponent: server_lr = lr * C**alpha (default {DEFAULT_ALPHA} where the method "
        "takes it)", low=0,
    )  # fmt: skip
    phi: float | None = setting(
        None, f"SplitAvg: fraction of clients whose split-layer gradients are averaged "
        f"(default {DEFAULT_PHI} where the method takes it)", low=0, high=1,
    )  # fmt: skip
    phase: str = setting("all", "when SplitAvg is on: all, initial:F (first ceil(F*E) epochs) or final:F")
    lr: float = setting(1e-3, "client learning rate (the server's is lr * C**alpha)", low=0, low_open=True)
    optimizer: str = setting("adam", "adam (betas 0.9/0.999) or sgd (momentum 0.9)", choices=("adam", "sgd"))
    client_optimizer_state: str = setting(
        "auto", "clients' optimizer state across rounds: reset (every round starts afresh, as FedAvg "
        "and Flower do), keep, or auto (reset for methods that average client models, else keep)",
        choices=("auto", "reset", "keep"), absent_means="keep",
    )  # fmt: skip
    lr_schedule: str = setting(
        "constant", "learning rates over epochs, clients and server alike: constant, or step:F:G (multiply "
        "by G from epoch floor(F*E) on; the authors' code uses step:0.8:0.1)",
    )  # fmt: skip
    precision: str = setting(
        "fp32", "fp32, or bf16 autocast for forward and backward (weights and optimizer state stay fp32; "
        "smashed data and gradients travel as bf16)", choices=("fp32", "bf16"),
    )  # fmt: skip
    loss: str = setting(
        "cross-entropy", "training loss of the split and whole models: cross-entropy, or bce-softmax (binary "
        "cross-entropy of the softmax outputs against one-hot targets, the authors' released code; a "
        "control, not the paper's stated loss)", choices=("cross-entropy", "bce-softmax"),
        absent_means="cross-entropy",
    )  # fmt: skip
    split_gradient: str = setting(
        "per-client", "what a client's split-layer gradient is: per-client (G_i = dL_i/ds_i, SPEC section 2) "
        "or joint-slice (its rows of dL/ds for the joint mean loss, 1/C of G_i with equal batches, as the "
        "authors' released code returns; a control)", choices=("per-client", "joint-slice"),
        absent_means="per-client",
    )  # fmt: skip
    seed: int = setting(0, "seed for model init, partitions, shuffling and SplitAvg's active sets",
                        low=0, high=MAX_SEED)  # fmt: skip
    # --- settings of some methods only: declared in their methods' files, fields here ---------
    __annotations__.update({name: o.kind for name, o in METHOD_OPTIONS.items()})
    locals().update({name: o.field for name, o in METHOD_OPTIONS.items()})
    # --- how it is scored --------------------------------------------------------------
    val_samples: int = setting(
        2000, "validation images scored after each epoch: a fixed class-balanced subset (0 = all 10k)", low=0
    )
    test_samples: int = setting(0, "test images scored: a fixed subset of the test split (0 = all)", low=0)
    test_each_epoch: bool = setting(False, "score the test subset after every epoch, not only the last")
    eval_mode: str = setting(
        "slices", "slices: the subset is split over the clients, each scores its slice (cost independent "
        "of C); every: every client scores the whole subset (cost C x N)", choices=("slices", "every"),
    )  # fmt: skip
    # --- measurement models ------------------------------------------------------------
    leakage: bool = setting(False, "after training, a server-side decoder attacks one client's smashed data")
    leakage_client: int = setting(0, "the client whose bottom model is attacked", low=0)
    leakage_aux_samples: int = setting(
        5000, "training images no client holds, used by the server to train its decoder", low=1
    )
    leakage_epochs: int = setting(5, "decoder training epochs", low=1)
    attack: str = setting(
        "", "privacy attacks after (fsha: during) training, comma-separated: inversion, fsha, label, "
        "broadcast; the target is --leakage-client (docs/guides/privacy.md)", absent_means="",
    )  # fmt: skip
    defense: str = setting(
        "", "a privacy defense on every client, NAME:PARAM: noise:SIGMA, nopeek:LAMBDA, label-rr:EPSILON",
        absent_means="",
    )  # fmt: skip
    joules_per_flop: float = setting(
        2.05e-11, "compute energy model: joules per FLOP (A100 FP32 datasheet figure)", low=0, low_open=True
    )
    joules_per_bit: float = setting(
        6.45e-7, "transmission energy model: joules per bit sent (phone Wi-Fi figure)", low=0, low_open=True
    )
    link_rate_bps: float = setting(
        100e6, "link rate R in bit/s for the modelled communication time", low=0, low_open=True
    )
    # --- systems model: the virtual clock (SPEC section 4) -----------------------------
    devices: str = setting(
        "homogeneous", "client profiles for the virtual clock: homogeneous (every client at "
        "--client-flops-per-s and --link-rate-bps), lognormal:SIGMA (each client's speed and links the "
        "default times exp(SIGMA*z), seeded), or a CSV/Parquet file with columns client_id, flops_per_s, "
        "up_bps, down_bps and optional availability in (0, 1]", absent_means="homogeneous",
    )  # fmt: skip
    client_flops_per_s: float = setting(
        1e10, "a default client's compute speed in FLOP/s (virtual clock)", low=0, low_open=True,
        absent_means=1e10,
    )  # fmt: skip
    server_flops_per_s: float = setting(
        1e13, "the server's compute speed in FLOP/s (virtual clock)", low=0, low_open=True,
        absent_means=1e13,
    )  # fmt: skip
    server_link_bps: float = setting(
        1e9, "the server's link in bit/s: what it sends leaves through it, a broadcast once (virtual clock)",
        low=0, low_open=True, absent_means=1e9,
    )  # fmt: skip
    compress: str = setting(
        "none", "compression of smashed data and split-layer gradients, both directions: none, fp16, "
        "int8 (a byte a value, a scale and zero point per sample) or topk:F (the largest F of each "
        "sample's values, with int32 indices); bytes are counted as sent", absent_means="none",
    )  # fmt: skip
    clients_per_round: int = setting(
        0, "clients sampled (seeded) to take part in each epoch, FL's and SFL's round (0 = all)", low=0,
        absent_means=0,
    )  # fmt: skip
    dropout: float = setting(
        0.0, "probability P in [0, 1) that a client misses an iteration (split methods) or a round (fl), "
        "seeded by (seed, client, epoch, step)", low=0, absent_means=0.0,
    )  # fmt: skip
    deadline_s: float = setting(
        0.0, "simulated seconds the server waits for a step's uploads; late clients sit the step out "
        "(0 = wait for all)", low=0, absent_means=0.0,
    )  # fmt: skip
    # --- where and how it runs (never changes a number) --------------------------------
    data_dir: str = setting(
        "", "where cifar10/cifar100 are read from (torchvision's folders; default $SGLR_DATA_DIR, else "
        "~/.cache/sglr-ray)", identity=False,
    )  # fmt: skip
    executor: str = setting(
        "local", "local (one process, no Ray) or ray (client shards and server as Ray actors)",
        identity=False, choices=("local", "ray"),
    )  # fmt: skip
    clients_per_actor: int = setting(
        0, "clients hosted by one Ray actor (0 = fit the cluster)", identity=False, low=0
    )
    gpus_per_client: float = setting(
        0.0, "fractional GPU requested per client on the Ray executor (0 = CPU)", identity=False, low=0
    )
    server_gpus: float = setting(
        0.0, "GPUs requested by the server actor on the Ray executor (0 = CPU)", identity=False, low=0
    )
    device: str = setting(
        "auto", "auto (cuda where the process was given a GPU and torch sees one, else cpu), cpu or cuda",
        identity=False, choices=("auto", "cpu", "cuda"),
    )  # fmt: skip
    placement_timeout_s: float = setting(
        60.0, "seconds to wait for an autoscaler to add the resources a run asks for, then fail",
        identity=False, low=0,
    )  # fmt: skip
    torch_threads: int = setting(
        0, "torch threads per process or actor (0 = derive from the CPUs available)", identity=False, low=0
    )
    checkpoint_every: int = setting(
        1, "epochs between checkpoints for --resume (0 = none; removed when the run completes)",
        identity=False, low=0,
    )  # fmt: skip
    max_restarts: int = setting(
        3, "restarts of a dead Ray actor; each replays the epoch in progress", identity=False, low=0
    )
    out: str = setting("out", "where results and checkpoints go (Parquet tables under runs/, epochs/, "
                       "clients/): a directory, or a URI pyarrow.fs reads such as s3://bucket/path "
                       "(S3 options in its query: ?endpoint_override=host:port&scheme=http)",
                       identity=False)  # fmt: skip
    run_id: str = setting(
        "", "name of this run's result files (default: method, model, clients, seed and a hash of the "
        "settings)", identity=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, checked_value(f, setting_type(f), getattr(self, f.name)))
        try:
            method = get_method(self.method)
        except MethodNotFoundError as ex:
            raise ConfigError(str(ex)) from ex
        self._check_method_settings(method)
        if self.run_id and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.run_id):
            raise ConfigError(f"--run-id {self.run_id!r}: use letters, digits, '.', '_' and '-'")
        try:
            Phase.parse(self.phase)
        except PhaseError as ex:
            raise ConfigError(f"--phase {ex}") from ex
        try:
            LrSchedule.parse(self.lr_schedule)
        except ValueError as ex:
            raise ConfigError(f"--lr-schedule {ex}") from ex
        self._resolve_knobs(method)
        checks.check_model_and_dataset(self)
        checks.check_sizes(self)
        checks.check_systems(self, method)
        check_privacy(self.attack, self.defense, method, self.method)
        if self.leakage or self.attack:
            uses_aux = self.leakage or any(a.uses_aux for a in parse_attacks(self.attack))
            checks.check_leakage(self, method, aux=uses_aux)

    def _check_method_settings(self, method: Method) -> None:
        """A setting that only some methods read must stay at its default for the others."""
        for name in METHOD_SETTINGS:
            if name in method.settings or getattr(self, name) == _FIELDS[name].default:
                continue
            users = [m for m, spec in _builtin_methods().items() if name in spec.settings]
            raise ConfigError(
                f"{flag(name)} {getattr(self, name)} applies to --method {' or '.join(users)} only"
            )

    def _resolve_knobs(self, method: Method) -> None:
        for knob, global_default in (("alpha", DEFAULT_ALPHA), ("phi", DEFAULT_PHI)):
            default = method.defaults.get(knob, global_default)
            value, fixed = getattr(self, knob), method.fixed.get(knob)
            if value is not None and fixed is not None and value != fixed:
                free = [m for m, spec in _builtin_methods().items() if spec.takes(knob)]
                raise ConfigError(
                    f"--{knob} {value:g} does not apply to --method {self.method}, which fixes it at "
                    f"{fixed:g}; methods that take --{knob}: {', '.join(free)}"
                )
            resolved = fixed if fixed is not None else (default if value is None else value)
            object.__setattr__(self, knob, float(resolved))

    def check_model(self) -> ModelParts:
        """The model cut as asked, checked by one dry forward pass on the dataset's input shape
        (this loads a file dataset); a ConfigError naming --model or --cut otherwise."""
        try:
            parts = self.model_parts
            parts.check()
        except ModelError as ex:
            raise ConfigError(str(ex)) from ex
        return parts

    @property
    def device_profiles(self) -> DeviceProfiles:
        """Each client's and the server's speed and links (systems/devices.py)."""
        return load_profiles(
            self.devices, self.clients, self.seed, self.client_flops_per_s, self.link_rate_bps,
            self.server_flops_per_s, self.server_link_bps,
        )  # fmt: skip

    # --- derived values ---------------------------------------------------------

    @property
    def spec(self) -> Method:
        """The method's declaration (methods/), with the run's privacy defense and attack hooks."""
        method = get_method(self.method)
        return install_privacy(method, self) if self.attack or self.defense else method

    @functools.cached_property
    def dataset_shape(self) -> tuple[tuple[int, ...], int]:
        """(input shape per sample, number of classes) of the dataset; a file dataset is loaded
        (once per process). Cached on the object, so actors get it with the configuration."""
        info = dataset_info(self.dataset)
        return tuple(info.input_shape), info.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset_shape[0]

    @property
    def num_classes(self) -> int:
        return self.dataset_shape[1]

    @functools.cached_property
    def model_parts(self) -> ModelParts:
        """The model as the nodes build it: declaration, resolved cut points, input shape, classes."""
        shape, classes = self.dataset_shape
        try:
            cut = resolve_cut(self.model, shape, classes, self.cut, self.spec.client.cut_points)
        except ModelError as ex:
            raise ConfigError(str(ex)) from ex
        return ModelParts(self.model, self.seed, shape, classes, cut)

    @property
    def resolved_cut(self) -> str:
        """The cut points as run, e.g. "1" or "1,6" (--cut's default resolved)."""
        return ",".join(map(str, self.model_parts.cut))

    @property
    def user_files(self) -> list[Path]:
        """The user's files a Ray actor imports: --method, --model and --dataset given as FILE.py:NAME."""
        found = [method_file(self.method), shipped_file(self.model), shipped_file(self.dataset)]
        return list(dict.fromkeys(path for path in found if path is not None))

    @property
    def resets_client_optimizers(self) -> bool:
        """Whether each round starts the clients' optimizers afresh (--client-optimizer-state)."""
        return resolved_optimizer_state(self.method, self.client_optimizer_state) == "reset"

    @property
    def server_lr(self) -> float:
        """SplitLr (SPEC section 2): eta_s = eta_c * C**alpha."""
        return split_lr(self.lr, self.clients, self.alpha)

    @property
    def steps_per_epoch(self) -> int:
        """Iterations of the parallel engine in an epoch: batches in one client's partition (a last
        partial batch is dropped: SplitAvg needs equal ones), or, with a batch plan, its length."""
        if self.spec.batch_plan is not None:
            return len(self.spec.batch_plan(self, 0))
        return self.samples_per_client // self.batch_size

    @property
    def iterations_per_epoch(self) -> int:
        """Optimizer steps of the whole system in one epoch, as a progress bar counts them."""
        return self.spec.schedule.iterations_per_epoch(self)

    def identity(self) -> dict[str, Any]:
        """The settings that can change a number: what makes two runs the same run. A choice the
        method resolves (client_optimizer_state auto) appears as what it resolved to, so
        `auto` and the explicit value it stands for are one run."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["identity"]}
        values["client_optimizer_state"] = "reset" if self.resets_client_optimizers else "keep"
        values["model"], values["dataset"] = self.model_identity, identity_name(self.dataset)
        return values

    @property
    def model_identity(self) -> str:
        """The model as the identity holds it: a file's with a hash of the file (an edited file is
        another run), and a cut other than the model's own (`alexnet cut 3`); the runs table's
        model column holds this too."""
        name = identity_name(self.model)
        if not self.cut:
            return name
        default = resolve_cut(self.model, *self.dataset_shape, "", self.spec.client.cut_points)
        return name if self.model_parts.cut == default else f"{name} cut {self.resolved_cut}"

    @property
    def run_key(self) -> str:
        """A short hash of `identity()`: equal exactly when the runs compute the same thing."""
        return identity_hash(self.identity())

    @property
    def cell_key(self) -> str:
        """A short hash of `identity()` without the seed: the runs a table averages over seeds."""
        return identity_hash(self.identity(), with_seed=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def resolved_optimizer_state(method: str, value: str) -> str:
    """client_optimizer_state as run: auto means reset for methods that average client models."""
    if value == "auto":
        return "reset" if get_method(method).averages_clients else "keep"
    return value


def identity_hash(identity: dict[str, Any], with_seed: bool = True) -> str:
    """run_key (or, without the seed, cell_key) of an identity. A setting added after runs were
    recorded is left out at its `absent_means` value, so those runs keep their keys."""
    absent = {f.name: f.metadata["absent_means"] for f in dataclasses.fields(RunConfig)}
    kept = {
        k: v
        for k, v in identity.items()
        if (with_seed or k != "seed") and (absent[k] is None or v != absent[k])
    }
    return settings_hash(kept)


def settings_hash(settings: dict[str, Any]) -> str:
    """8 hex digits of SHA-256 over the settings as sorted JSON (floats by repr: 0.1 != 0.1000001)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _builtin_methods() -> dict[str, Method]:
    from sglr_ray.methods import METHODS

    return METHODS


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(RunConfig))


def setting_type(f: dataclasses.Field) -> type:
    """The base Python type of a setting: int, float, str or bool (Optional stripped)."""
    hint = _HINTS[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def check_setting_names(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Settings with '-' in keys turned to '_'; an unknown key is an error with a did-you-mean."""
    known = [f.name for f in dataclasses.fields(RunConfig)]
    settings = {str(k).replace("-", "_"): v for k, v in settings.items()}
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where} has an unknown setting {key!r}{hint}")
    return settings


_HINTS = typing.get_type_hints(RunConfig)
_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
METHOD_SETTINGS = tuple(METHOD_OPTIONS)  # read by the methods that declare them
