"""eSpeak NG speech synthesis through the ``espeakng-loader`` package (it ships libespeak-ng and its
voice data, so no system package is needed), resampled to 16 kHz mono float32.

The C library is process-global; :class:`Espeak` initialises it once and serialises calls. eSpeak NG
carries internal state from one utterance to the next (and espeak_Terminate does not clear it), so
a sequence of utterances is reproducible only when synthesised from a fresh process.
API: espeak-ng's ``speak_lib.h`` (espeak_Initialize, espeak_SetSynthCallback, espeak_SetVoiceByName,
espeak_SetParameter, espeak_Synth, espeak_Synchronize).
"""

import ctypes
import threading
from math import gcd

import numpy as np

from .audio import SAMPLE_RATE

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_ESPEAK_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """``synthesize(text, voice, rate, pitch) -> np.ndarray`` (16 kHz float32 in [-1, 1])."""

    _lock = threading.Lock()
    _lib = None
    _rate = 0
    _chunks: list = []

    def __init__(self) -> None:
        with Espeak._lock:
            if Espeak._lib is None:
                import espeakng_loader

                Espeak._lib = ctypes.CDLL(espeakng_loader.get_library_path())
                Espeak._libc = ctypes.CDLL(None)  # the process's C library, whose rand() eSpeak NG uses
                Espeak._callback = _CALLBACK(Espeak._collect)  # keep a reference: C holds the pointer
                self._initialise()

    @staticmethod
    def _initialise() -> None:
        import espeakng_loader

        rate = Espeak._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data in {espeakng_loader.get_data_path()}")
        Espeak._lib.espeak_SetSynthCallback(Espeak._callback)
        Espeak._rate = rate

    @staticmethod
    def _collect(wav, n, events) -> int:
        if n > 0:
            Espeak._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, rate: int = 160, pitch: int = 50, seed: int = 0) -> np.ndarray:
        """``seed`` seeds the noise eSpeak NG mixes in (its own generator and C's rand(), which it
        also draws from). Reproducible audio needs that AND the same sequence of earlier utterances
        in the process (module docstring)."""
        from scipy.signal import resample_poly

        with Espeak._lock:
            lib = Espeak._lib
            Espeak._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
            lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice!r}")
            lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
            lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
            Espeak._chunks = []
            data = text.encode("utf-8")
            err = lib.espeak_Synth(data, ctypes.c_size_t(len(data) + 1), 0, 0, 0, _ESPEAK_CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            if err != 0 or not Espeak._chunks:
                raise RuntimeError(f"eSpeak NG could not synthesise {text!r} with voice {voice!r} (error {err})")
            wav = np.concatenate(Espeak._chunks).astype(np.float32) / 32768.0
        g = gcd(SAMPLE_RATE, Espeak._rate)
        return resample_poly(wav, SAMPLE_RATE // g, Espeak._rate // g).astype(np.float32)
