"""Stack tools: precompute the embeddings of every slice of a stack, batch prompting from a prompts file, and
propagation of objects through z; serially or on Dask. No napari or Qt imports (the widget calls these functions,
each with a ``progress(done, total)`` callback and a ``cancel`` token)."""

from .batch import segment_from_prompts
from .precompute import PrecomputeResult, attach_store, detach_store, precompute_stack
from .prompt_set import PromptSet, build_prompt_set
from .prompts_file import PromptsFileError, read_prompts
from .propagate import PropagationResult, propagate_object
from .propagate_prompts import segment_with_propagation
from .reader import StackInputError, StackReader, open_stack
from .store import StackStore, StackStoreWarning, StoreError, StoreMismatchError
from .worker import ModelConfig

__all__ = [
    "ModelConfig",
    "PrecomputeResult",
    "PromptSet",
    "PromptsFileError",
    "PropagationResult",
    "StackInputError",
    "StackReader",
    "StackStore",
    "StackStoreWarning",
    "StoreError",
    "StoreMismatchError",
    "attach_store",
    "build_prompt_set",
    "detach_store",
    "open_stack",
    "precompute_stack",
    "propagate_object",
    "read_prompts",
    "segment_from_prompts",
    "segment_with_propagation",
]
