"""Print the Hugging Face folder of the built-in SmolLM2-135M (converted from its GGUF once, then cached).

The peers load the model from this folder: ``python benchmarks/peers/model_dir.py``.
"""

from transcoderbench.lm.loading import BUILTIN_MODEL, builtin_gguf_path, cached_gguf_dir, default_cache_root

if __name__ == "__main__":
    print(cached_gguf_dir(builtin_gguf_path(), default_cache_root() / "models" / BUILTIN_MODEL))
