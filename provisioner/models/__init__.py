"""The model store on the control node: GGUF files and Hugging Face folders.

- :mod:`.store`: add, list, get, remove (content-addressed, sha256 checked);
- :mod:`.hf`: what is particular to Hugging Face folders (their files, their tree hash,
  the fetch a node runs to copy one).
"""
