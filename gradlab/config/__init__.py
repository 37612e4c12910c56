"""Experiment configuration, in four parts along its seams:

- `schema`: the pydantic models of an experiment and the names of its variants and runs;
  `rules` holds the clipping and skip rules' models (`base`: what both share);
- `loading`: the YAML file, `--set` overrides, the resolved form and its hash;
- `messages`: pydantic's errors as one short message at the user's key and line;
- `memory`: the size estimate that refuses what would not fit;
- `stacking`: which configs may train in one stack (they differ in hyperparameters only).

This package's namespace is the public API (and what the rest of gradlab imports).
"""

from .base import KeyPath, NonNegative, Positive, Size
from .loading import (MAX_ALIASES, MAX_CONFIG_BYTES, MAX_NESTING, MAX_VALUES, config_hash, dump_yaml,
                      experiment_dir, load_config, load_resolved)
from .memory import _parameter_count, available_memory_bytes, estimate_memory_bytes, task_dims
from .rules import (DIRECTION_RULES, ClipAGC, ClipAutoClip, ClipChain, ClipConfig, ClipNone, ClipNorm,
                    ClipPerTensor, ClipValue, ClipZClip, RULES, Rule, RuleConfig, SkipSpikes, parse_rule,
                    register_rule, unregister_rule)
from .schema import (NAME_PATTERN, RECURRENT, SEQUENCE_TASKS, THRESHOLD_KEYS, AdamConfig, AdamWConfig, AddingTask,
                     AssociativeRecallTask, CopyTask, DyckTask, LMTask, ExperimentConfig,
                     InitConfig, ModelConfig, OptimizerConfig, PrecisionConfig, RMSpropConfig, SGDConfig,
                     SpiralsTask, SweepConfig, TaskConfig, TeacherTask, TemporalOrderTask, TrainConfig,
                     format_threshold, run_id, threshold_of, variant_id)
from .stacking import HYPERPARAMETERS, is_hyperparameter, stack_differences, stack_key

__all__ = [
    "KeyPath", "NonNegative", "Positive", "Size", "MAX_ALIASES", "MAX_CONFIG_BYTES", "MAX_NESTING", "MAX_VALUES",
    "config_hash", "dump_yaml", "experiment_dir", "load_config", "load_resolved", "_parameter_count",
    "available_memory_bytes", "estimate_memory_bytes", "task_dims", "DIRECTION_RULES", "ClipAGC", "ClipAutoClip",
    "ClipChain", "ClipConfig", "ClipNone", "ClipNorm", "ClipPerTensor", "ClipValue", "ClipZClip", "RuleConfig",
    "SkipSpikes", "NAME_PATTERN", "RECURRENT", "SEQUENCE_TASKS", "THRESHOLD_KEYS", "AdamConfig", "AdamWConfig",
    "AddingTask", "AssociativeRecallTask", "CopyTask", "DyckTask", "LMTask",
    "ExperimentConfig", "InitConfig", "ModelConfig", "OptimizerConfig", "PrecisionConfig", "RMSpropConfig",
    "SGDConfig", "SpiralsTask", "SweepConfig", "TaskConfig", "TeacherTask", "TemporalOrderTask", "TrainConfig",
    "format_threshold", "run_id", "threshold_of", "variant_id", "RULES", "Rule", "parse_rule", "register_rule",
    "unregister_rule", "HYPERPARAMETERS", "is_hyperparameter", "stack_differences", "stack_key",
]
