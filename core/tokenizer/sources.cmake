# Sources of the tokenizer (paths relative to core/), compiled into respin_base.
set(RESPIN_TOKENIZER_SOURCES
  tokenizer/tokenizer.cpp
  tokenizer/bpe_model.cpp
  tokenizer/added_tokens.cpp
  tokenizer/normalizers.cpp
  tokenizer/pre_tokenizers.cpp
  tokenizer/decoders.cpp
  tokenizer/unicode_text.cpp
  tokenizer/bpe_trainer.cpp
)
