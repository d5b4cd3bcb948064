"""The self-hosted realtime transcription server (`roomscribe serve`).

Speaks the protocol in docs of the realtime socket (Together's, with OpenAI's extra
VAD events) backed by faster-whisper: `handshake` and `session` are sans-I/O, `vad`
segments speech as it streams in, `scheduler` shares the model fairly across
sessions, `transcriber` is the model, and `app` is the websockets shell.
"""
