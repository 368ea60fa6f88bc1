"""Trains a small byte-level BPE tokenizer (Hugging Face `tokenizers`) for the data-preparation tests and saves it as
tokenizer.json with <|endoftext|> as its special token.

Usage: make_tiny_tokenizer.py OUT.json VOCAB_SIZE TEXT_FILE...
"""
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def main() -> None:
    out, vocab_size, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    tok.save(out)


if __name__ == "__main__":
    main()
