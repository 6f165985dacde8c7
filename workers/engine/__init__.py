"""The inference engine (vLLM) as this project runs it.

- `paths`: where the engine virtualenv and its packaged models are (no torch needed).
- `launch`: the command line and environment of one vLLM OpenAI server (no torch needed).
- `tinymodel`: builds a tiny random-weight chat model; runs in the engine virtualenv.
"""
