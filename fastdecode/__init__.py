"""fastdecode: lossless speculative, multi-draft and long-context decoding for Hugging Face causal LMs."""
from .api import generate
from .attention import LambdaAttention, lambda_attention
from .config import MultiDraftConfig, SamplingConfig, SpeculativeConfig
from .models import check_pair, load_model, load_pair
from .stats import DecodeStats, GenerationResult

__all__ = [
    "generate", "GenerationResult", "DecodeStats", "SamplingConfig", "SpeculativeConfig", "MultiDraftConfig",
    "check_pair", "load_model", "load_pair",
    "LambdaAttention", "lambda_attention",
]
