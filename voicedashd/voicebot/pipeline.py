"""One call's Pipecat pipeline, from config and the process-wide models, and its services."""

from __future__ import annotations

import importlib
import importlib.resources
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnxruntime
import structlog
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import ErrorFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker, ProcessorUnusablePolicy
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

from ..config import LlmConfig, SttConfig, TtsConfig, VoicebotConfig, VoicebotOverride
from ..errors import ListenerError
from ..events import CallInfo
from .echo import EchoReference
from .hibari_tts import HibariTTSService, HibariVoice
from .host import (
    CallEvents,
    Inbox,
    Observe,
    Offload,
    Outbox,
    Prompts,
    RunProcess,
    TryOffload,
)
from .rag import KnowledgeBase
from .responder import AnswerPolicy, Responder, Wording
from .services import EspeakTTSService, PocketsphinxSTTService, WhisperSTTService
from .sphinx import SAMPLE_RATE, SphinxModel, build_vocabulary
from .transport import RtpTransport
from .turns import Conversation, TurnClock
from .whisper import WhisperRecognizer

log = structlog.get_logger(__name__)

ProcessorFactory = Callable[[CallInfo], FrameProcessor | None]
CANCEL_TIMEOUT = 2.0  # a pipeline cancelled from outside stops within this
DEFAULT_HIBARI_VOICE = "heart"  # the voice inside the hibari-tts wheel
ESPEAK_WORDS_PER_MINUTE = 170  # tts.speed's default: hibari's natural pace


class PluginError(ListenerError):
    """A [voicebot] processors entry that cannot be imported or is not callable.

    At start-up it is fatal like a listener that cannot bind: one line naming the setting.
    """


class SpeechModelError(ListenerError):
    """A speech model that cannot be loaded (fatal at start-up, one line naming the setting)."""


class ProcessorUnusable(Exception):
    """A processor reported it can no longer work without an exception saying why."""


def load_processor_factory(ref: str) -> ProcessorFactory:
    """Import "package.module:factory" (called per call with the CallInfo)."""
    module_name, _, attribute = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"voicebot.processors: cannot load {ref!r}: {exc}") from None
    if not callable(factory):
        raise PluginError(f"voicebot.processors: {ref!r} is not callable")
    return factory  # type: ignore[no-any-return]


def load_vad_model() -> onnxruntime.InferenceSession:
    """Pipecat's bundled Silero VAD model, loaded once per process (blocking)."""
    path = importlib.resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx")
    return SileroOnnxModel(str(path), force_onnx_cpu=True).session


class _SharedSileroModel(SileroOnnxModel):
    """Silero's per-stream state around a session shared by every call."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session
        self.sample_rates = [8000, 16000]
        self.reset_states()


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD for one call on the process-wide model, analysed inline.

    A 32 ms window costs ~0.1 ms of inference, less than handing it to a thread (which the
    base class would do, on a thread of its own per call).
    """

    def __init__(self, session: onnxruntime.InferenceSession, params: VADParams) -> None:
        VADAnalyzer.__init__(self, sample_rate=SAMPLE_RATE, params=params)
        self._model = _SharedSileroModel(session)
        self._windows_since_reset = 0
        self._low_confidence_windows = 0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        """Analyse a chunk of audio on the event loop."""
        return self._run_analyzer(buffer)


@dataclass(frozen=True)
class Models:
    """What every call shares: the VAD, speech models, knowledge bases, recognisers, plugins."""

    vad: onnxruntime.InferenceSession
    knowledge: Mapping[Any, KnowledgeBase] = field(default_factory=dict)
    sphinx: Mapping[Any, SphinxModel] = field(default_factory=dict)
    plugins: tuple[ProcessorFactory, ...] = ()
    whisper: WhisperRecognizer | None = None
    hibari: HibariVoice | None = None


def build_models(config: VoicebotConfig, loaded: Models) -> Models:
    """Index the knowledge, load the speech models not loaded yet and the plugins (blocking)."""
    whisper, hibari = loaded.whisper, loaded.hibari
    try:
        if config.stt.engine == "whisper" and whisper is None:
            whisper = WhisperRecognizer.load(workers=config.speech_workers)
        voice = config.tts.voice or DEFAULT_HIBARI_VOICE
        if config.tts.engine == "hibari" and (hibari is None or hibari.name != voice):
            hibari = HibariVoice.load(voice)
    except ValueError as exc:  # the model files, or a voice not on this host
        raise SpeechModelError(str(exc)) from None
    knowledge: dict[Any, KnowledgeBase] = {None: KnowledgeBase(())}
    for folder in config.knowledge_paths():
        knowledge[folder] = KnowledgeBase.from_folder(folder)
    sphinx: dict[Any, SphinxModel] = {}
    if config.stt.engine == "pocketsphinx":
        for folder, base in knowledge.items():
            vocabulary = build_vocabulary(base.spoken_sentences())
            sphinx[folder] = SphinxModel(vocabulary)
            log.info("knowledge_indexed", path=str(folder) if folder else None,
                     passages=len(base.passages), words=vocabulary.words,
                     words_without_pronunciation=len(vocabulary.missing))
    plugins = tuple(load_processor_factory(ref) for ref in config.processors)
    return Models(vad=loaded.vad, knowledge=knowledge, sphinx=sphinx, plugins=plugins,
                  whisper=whisper, hibari=hibari)


@dataclass(frozen=True)
class CallHooks:
    """The Trio side of one call, as the bridge provides it."""

    inbox: Inbox
    outbox: Outbox
    events: CallEvents
    offload: Offload
    try_offload: TryOffload
    run_process: RunProcess
    observe: Observe
    echo: EchoReference
    environ: Mapping[str, str]
    prompts: Prompts | None = None


def render(template: str, call: CallInfo) -> str:
    """Fill a config text's {extension}, {tenant} and {caller} for a call."""
    return template.format(extension=call.callee_extension or call.callee,
                           tenant=call.tenant, caller=call.caller)


def build_pipeline(call: CallInfo, config: VoicebotConfig, models: Models,
                   hooks: CallHooks, *, notice: str = "") -> Pipeline:
    """The processors of one call, in order: RTP in, VAD, STT, plugins, answer, TTS, RTP out;
    notice (a recorded call's) is said before the greeting."""
    chosen: VoicebotOverride = config.for_call(call.tenant, call.callee_extension)
    knowledge = models.knowledge.get(chosen.knowledge) or KnowledgeBase(())
    turns = TurnClock()
    conversation = Conversation(hooks.events)
    transport = RtpTransport(inbox=hooks.inbox, outbox=hooks.outbox, events=conversation,
                             turns=turns, observe=hooks.observe, rate=SAMPLE_RATE)
    vad = VADProcessor(vad_analyzer=SharedSileroVADAnalyzer(
        models.vad, VADParams(stop_secs=config.vad_stop)))
    stt = _stt(config.stt, models, models.sphinx.get(chosen.knowledge), hooks)
    plugins = [p for factory in models.plugins if (p := factory(call)) is not None]
    responder = Responder(
        knowledge=knowledge,
        wording=Wording(greeting=render(chosen.greeting or "", call),
                        fallback=render(chosen.fallback or "", call),
                        farewell=render(chosen.farewell or "", call),
                        system_prompt=render(chosen.system_prompt or "", call),
                        transfer=render(chosen.transfer_line or "", call),
                        transfer_failed=render(chosen.transfer_failed_line or "", call),
                        notice=render(notice, call)),
        policy=AnswerPolicy(top_k=config.top_k, sentences=config.answer_sentences,
                            use_llm=config.llm.engine != "none", barge_in=config.barge_in),
        conversation=conversation, turns=turns, observe=hooks.observe, prompts=hooks.prompts)
    llm = _llm(config.llm, hooks.environ)
    tts = _tts(config.tts, models, hooks)
    processors: list[FrameProcessor] = [transport.input(), vad, stt, *plugins, responder]
    if llm is not None:
        processors.append(llm)
    processors += [tts, transport.output()]
    return Pipeline(processors)


def _key(section: SttConfig | TtsConfig | LlmConfig, environ: Mapping[str, str]) -> str:
    return environ.get(section.api_key_env, "") if section.api_key_env else ""


def _stt(config: SttConfig, models: Models, sphinx: SphinxModel | None,
         hooks: CallHooks) -> FrameProcessor:
    key = _key(config, hooks.environ)
    if config.engine == "whisper":
        assert models.whisper is not None, "build_models loads the configured recogniser"
        return WhisperSTTService(recognizer=models.whisper, echo=hooks.echo,
                                 offload=hooks.offload, try_offload=hooks.try_offload)
    if config.engine == "pocketsphinx":
        assert sphinx is not None, "every knowledge folder has a recogniser"
        return PocketsphinxSTTService(model=sphinx, offload=hooks.offload)
    settings = _fields(model=config.model, language=config.language)
    if config.engine == "deepgram":
        from pipecat.services.deepgram.stt import DeepgramSTTService

        return DeepgramSTTService(api_key=key, base_url=config.base_url or "",
                                  sample_rate=SAMPLE_RATE,
                                  settings=DeepgramSTTService.Settings(**settings))
    from pipecat.services.openai.stt import OpenAISTTService

    return OpenAISTTService(api_key=key or "none", base_url=config.base_url,
                            settings=OpenAISTTService.Settings(**settings))


def _tts(config: TtsConfig, models: Models, hooks: CallHooks) -> FrameProcessor:
    key = _key(config, hooks.environ)
    if config.engine == "hibari":
        assert models.hibari is not None, "build_models loads the configured voice"
        return HibariTTSService(voice=models.hibari, offload=hooks.offload,
                                observe=hooks.observe,
                                speed=config.speed / ESPEAK_WORDS_PER_MINUTE)
    if config.engine == "espeak":
        return EspeakTTSService(run_process=hooks.run_process, observe=hooks.observe,
                                voice=config.voice or "en-us", speed=config.speed)
    settings = _fields(model=config.model, voice=config.voice)
    if config.engine == "cartesia":
        from pipecat.services.cartesia.tts import CartesiaTTSService

        return CartesiaTTSService(api_key=key, **({"url": config.base_url} if config.base_url
                                                   else {}),
                                  settings=CartesiaTTSService.Settings(**settings))
    if config.engine == "openai":
        from pipecat.services.openai.tts import OpenAITTSService

        return OpenAITTSService(api_key=key or "none", base_url=config.base_url,
                                settings=OpenAITTSService.Settings(**settings))
    from pipecat.services.deepgram.tts import DeepgramTTSService

    return DeepgramTTSService(api_key=key, settings=DeepgramTTSService.Settings(**settings))


def _llm(config: LlmConfig, environ: Mapping[str, str]) -> FrameProcessor | None:
    if config.engine == "none":
        return None
    from pipecat.services.openai.llm import OpenAILLMService

    return OpenAILLMService(
        api_key=_key(config, environ) or "none", base_url=config.base_url,
        settings=OpenAILLMService.Settings(model=config.model, temperature=config.temperature,
                                           max_tokens=config.max_tokens))


def _fields(**values: Any) -> dict[str, Any]:
    """The settings that were configured (None: leave the service's default)."""
    return {name: value for name, value in values.items() if value is not None}


async def run_pipeline(call: CallInfo, config: VoicebotConfig, models: Models,
                       hooks: CallHooks, notice: str = "") -> None:
    """Run one call's pipeline to its end (asyncio side); raise the error that failed it.

    An exception inside a processor reaches the worker as an ErrorFrame carrying it, and a
    service that can no longer work marks itself unusable: either cancels the pipeline, and
    the first such exception is raised here once the worker has stopped (ProcessorUnusable
    if the processor gave none). Cancelled from outside, Pipecat's runner cancels the
    pipeline and returns normally; the caller (the bridge) tells that case apart.
    """
    worker = PipelineWorker(
        build_pipeline(call, config, models, hooks, notice=notice),
        name=f"call-{call.call_id}",
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE,
                              audio_out_sample_rate=SAMPLE_RATE),
        enable_rtvi=False, enable_turn_tracking=False, idle_timeout_secs=None,
        cancel_timeout_secs=CANCEL_TIMEOUT, check_dangling_tasks=False,
        processor_unusable_policy=ProcessorUnusablePolicy.CANCEL)
    failures: list[Exception] = []

    @worker.event_handler("on_pipeline_error")
    async def _failed(worker: PipelineWorker, frame: ErrorFrame) -> None:
        usable = frame.processor is None or frame.processor.is_usable
        hiccup = frame.exception is None and usable
        if hiccup or failures:  # one the processor got past, or the aftermath of the failure
            log.warning("voicebot_processor_error", call_id=call.call_id,
                        processor=str(frame.processor), error=frame.error)
        else:  # the call's failure: raised once the pipeline has stopped, the call task logs it
            failure = frame.exception or ProcessorUnusable(frame.error)
            # Which processor, in Pipecat's words: the traceback alone may not say (an
            # exception raised downstream is reported by the processor that pushed the frame).
            failure.add_note(f"reported by {frame.processor}: {frame.error}")
            failures.append(failure)
        if usable and not hiccup:  # an unusable one is cancelled by the worker's policy
            await worker.cancel(reason=frame.error)

    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False,
                          check_dangling_tasks=False)
    await runner.add_workers(worker)
    await runner.run()
    if failures:
        raise failures[0]
