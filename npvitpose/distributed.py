"""The `infer` job over a Dask cluster: `pip install "npvitpose[dask]"`; the only module that imports dask.

- Each worker loads the model once (`ModelPlugin`, memory-mapped so that workers on one host share its
  pages), sets its Numba and BLAS pools to the worker's Dask thread count (Dask sets OMP/BLAS to 1 per
  thread but not Numba's) and compiles or loads the kernels under a per-host file lock beside Numba's cache.
- Tasks carry paths and boxes, never pixels: a worker reads the images or the frame range it processes.
  An image task holds about TASK_PEOPLE people, their crops batched across images (CHUNK people per
  forward, `pipeline.predict_stream`); a video task is a range of frames, read after one seek.
- Results come back to the client in input (frame) order. A task whose worker dies is run again by Dask,
  so nothing is lost or doubled; a bad input is reported and skipped as in one process.
"""

import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid

try:
    import fcntl
except ImportError:  # Windows: no host lock, each worker compiles on its own
    fcntl = None

import numpy as np
from distributed import Client, LocalCluster, WorkerPlugin, get_worker
from distributed.scheduler import KilledWorker

from .errors import NpvitposeError
from .images import cv_path
from .run import Detections, Options, Runner, check_job, expand_inputs, failure_message, is_video, vis_targets

TASK_PEOPLE = 64  # people per image task: 4 forwards of CHUNK, ~15 s of ViT-B on 2 cores, little lost to a dead worker
EMPTY_COST = 0.25  # an input without people still costs its reading, about a quarter of one person's forward
POLL = 1.0  # seconds between checks that the cluster still has workers while waiting for a result
_PLUGIN = "npvitpose-model-"
# the scheduler always serves HTTP (health, metrics): on a free loopback port, without the dashboard
LOOPBACK_HTTP = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}


# ---------------------------------------------------------------------------------------------- workers


class ModelPlugin(WorkerPlugin):
    """Loads the model on every worker, present and future, once for the life of the worker."""

    idempotent = True  # registered again by a later job on the same cluster: the loaded model is kept

    def __init__(self, path, spec=None, mmap=True, meta=None, precision="fp32"):
        self.path, self.spec, self.mmap, self.precision = os.fspath(path), spec, mmap, precision
        self.meta = meta  # the client's model metadata: every worker must load the same model
        key = [self.path, spec, mmap, meta, precision]
        self.name = _PLUGIN + hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]
        self.model = self.lock = None

    async def setup(self, worker):
        import asyncio

        # loading and compiling take seconds: off the worker's event loop, which must keep its heartbeats
        await asyncio.get_running_loop().run_in_executor(None, self._load, worker.state.nthreads, worker.address)

    def _load(self, nthreads, address):
        from .model import load
        from .pipeline import predict
        from .threads import set_threads

        set_threads(nthreads)
        where = self.path if os.path.exists(self.path) or self.spec is None else self.spec  # a name: fetched here
        try:
            with _host_lock():  # one process per host downloads and compiles; the others then load its results
                model = load(where, mmap=self.mmap, precision=self.precision)
                predict(model, np.zeros((64, 48, 3), np.uint8), [[8.0, 8.0, 32.0, 48.0]])  # kernels ready now
        except (NpvitposeError, OSError) as e:
            raise NpvitposeError(f"worker {address}: {e} (every machine needs the model at the same path)") from None
        except MemoryError:
            raise NpvitposeError(f"worker {address}: out of memory loading {where}") from None
        if self.meta is not None and model.meta != self.meta:
            raise NpvitposeError(f"worker {address}: {where} is not the client's model (its metadata differs)")
        self.model, self.lock = model, threading.Lock()

    def teardown(self, worker):
        self.model = None


def _cache_folder():
    """Where Numba caches the kernels' machine code: beside them if writable, else NUMBA_CACHE_DIR or
    ~/.cache/numba (Numba's own rule, asked of one kernel)."""
    from .kernels import layernorm

    try:
        return layernorm._layernorm.parallel._cache._cache_path
    except AttributeError:  # a Numba without this internal: any per-host folder will do for the lock
        import tempfile

        return tempfile.gettempdir()


@contextlib.contextmanager
def _host_lock():
    """A file lock shared by the processes of one host. Numba writes its cache through a temporary file
    and a rename, so concurrent writers are safe; the lock only spares N workers compiling N times."""
    folder = _cache_folder()
    if fcntl is None:
        yield
        return
    try:
        os.makedirs(folder, exist_ok=True)
        f = open(os.path.join(folder, ".npvitpose-compile.lock"), "a")
    except OSError:  # an unwritable cache: Numba compiles in memory, nothing to share
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _worker_model(name):
    plugin = get_worker().plugins.get(name)
    if plugin is None or plugin.model is None:
        raise NpvitposeError(f"worker {get_worker().address}: the npvitpose model is not loaded here")
    return plugin


class _Given:
    """The boxes of one task's inputs, cut from the client's detections: only these travel to the worker.
    An input whose boxes could not be told carries the message, raised after its image is read (as in one process)."""

    def __init__(self, images=None, frames=None, default=(np.zeros((0, 4)), np.zeros((0,)))):
        self.images, self.frames, self.default = images or {}, frames or {}, default

    def for_image(self, path, image=None):
        found = self.images[path]
        if isinstance(found, str):
            raise NpvitposeError(found)
        return found

    def for_frame(self, index, image=None):
        return self.frames.get(index, self.default)


def _finish(runner, payload, keypoints, scores):
    """One input's records (and drawing) from its predicted keypoints, as `run.process_image` makes them."""
    from .outputs import write_image_atomic

    image_id, found, box_scores, image, target = payload
    keypoints, scores, inst, kept = runner.finish(keypoints, scores, found, box_scores)
    if target is not None:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        write_image_atomic(target, runner.draw(image, keypoints, scores))
    return runner.records(image_id, keypoints, scores, inst, kept)


def images_task(plugin_name, options, jobs, given):
    """Runs on a worker: jobs [(path, vis target)] -> per job (its image id, its records), or its error line."""
    from .images import read_image
    from .pipeline import predict_stream

    plugin = _worker_model(plugin_name)
    runner = Runner(plugin.model, options)
    given = _on_this_worker(given)
    out = {}

    def items(todo):
        for i in todo:
            path, target = jobs[i]
            try:
                image = read_image(path, options.max_image_pixels)
                image_id, found, box_scores = given.for_image(path, image)
            except (NpvitposeError, OSError, MemoryError) as e:
                out[i] = failure_message(path, e)
                continue
            yield i, image, found, (image_id, found, box_scores, image if target is not None else None, target)

    def stream(todo):
        for i, payload, keypoints, scores in predict_stream(plugin.model, items(todo), options.flip, options.decode):
            try:
                out[i] = payload[0], _finish(runner, payload, keypoints, scores)
            except (NpvitposeError, OSError, MemoryError) as e:
                out[i] = failure_message(jobs[i][0], e)

    with plugin.lock:  # one input stream at a time per worker: each forward already uses every thread
        _threads_here()
        try:
            stream(range(len(jobs)))
        except (NpvitposeError, OSError, MemoryError):  # some input broke the batch: the rest one by one, to name it
            for i in range(len(jobs)):
                if i not in out:
                    try:
                        stream([i])
                    except (NpvitposeError, OSError, MemoryError) as e:
                        out[i] = failure_message(jobs[i][0], e)
    return [out[i] for i in range(len(jobs))]


def frames_task(plugin_name, options, path, start, stop, given):
    """Runs on a worker: frames [start, stop) of a video (stop None: to its end) -> (frames read, per frame
    (keypoints, scores, instance scores, boxes, box scores)). The client makes the records: track ids need
    the frames in order (`run.VideoTracks`)."""
    import cv2

    from .pipeline import predict_stream
    from .run import VideoTracks

    plugin = _worker_model(plugin_name)
    runner = Runner(plugin.model, options)
    given = _on_this_worker(given)
    with cv_path(path) as name:  # never a name OpenCV cannot take (images.cv_path)
        capture = cv2.VideoCapture(name)
    read, arrays = 0, []
    try:
        if not capture.isOpened():
            raise NpvitposeError(f"cannot read video {path!r}: OpenCV cannot open it")
        _seek(capture, start)

        def frames():
            nonlocal read
            while stop is None or start + read < stop:
                ok, frame = capture.read()
                if not ok or frame is None:
                    return
                read += 1
                yield start + read - 1, np.ascontiguousarray(frame[:, :, ::-1])  # BGR -> RGB

        with plugin.lock:
            _threads_here()
            if options.det_every > 1:  # boxes carried frame to frame: one frame at a time, as in one process
                tracks = VideoTracks(runner)  # the range starts on a detection frame, as the client cut it
                for index, image in frames():
                    arrays.append(runner.predict(image, *tracks.boxes(index, given, image), True))
                    tracks.frame(index, *arrays[-1])
            else:
                def items():
                    for index, image in frames():
                        found, box_scores = given.for_frame(index, image)
                        yield index, image, found, (found, box_scores)

                for _, (found, box_scores), keypoints, scores in predict_stream(plugin.model, items(), options.flip,
                                                                                 options.decode):
                    arrays.append(runner.finish(keypoints, scores, found, box_scores, True))
    finally:
        capture.release()
    return read, arrays


_LOADED = {}  # per worker process: detectors by their settings, each read once (a task carries no net)


def _on_this_worker(source):
    """A boxes source as it arrived, with its detector (if any) swapped for this process's loaded copy."""
    import pickle

    detector = getattr(source, "detector", None)
    if detector is not None:
        source.detector = _LOADED.setdefault(pickle.dumps(detector), detector)
    return source


def _seek(capture, start):
    """To frame `start`: one seek (OpenCV's FFmpeg backend lands on the exact frame of a constant-rate
    file), else frame by frame from where it landed."""
    import cv2

    if start == 0:
        return
    if capture.set(cv2.CAP_PROP_POS_FRAMES, start) and int(capture.get(cv2.CAP_PROP_POS_FRAMES)) == start:
        return
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    for _ in range(start):
        if not capture.grab():
            return


def _threads_here():
    from .threads import apply

    apply()  # Numba's thread count is per calling thread: Dask's task threads take the worker's


# ---------------------------------------------------------------------------------------------- client


def split(costs, parts, most=TASK_PEOPLE):
    """Consecutive ranges [a, b) of items whose costs sum to about `most`, less when that would leave some
    of the `parts` workers idle; every range holds at least one item."""
    target = max(min(most, float(sum(costs)) / max(parts, 1)), 1e-9)
    ranges, start, acc = [], 0, 0.0
    for i, c in enumerate(costs):
        acc += c
        if acc >= target - 1e-9:
            ranges.append((start, i + 1))
            start, acc = i + 1, 0.0
    if start < len(costs):
        ranges.append((start, len(costs)))
    return ranges


def infer(client, inputs, boxes, model="vitpose-b", options=Options(), vis=None, on_error=None, mmap=True,
          timeout=60.0, task_people=TASK_PEOPLE, precision="fp32"):
    """COCO keypoint records of `inputs` (image files, folders, or one video) over a Dask cluster: the
    records a single-process `npvitpose.run.run` gives, in the same order.

    boxes: a detections JSON path or a boxes source (`npvitpose.run.Detections`). model: an .npz path (the
    same path on every machine) or a published name (each machine fetches it into its own cache).
    vis: where to draw, as `--vis` (a folder every worker can write to). on_error(path, message) is told
    of each input that failed, in input order, and the input is skipped; without it the first failure
    raises NpvitposeError. timeout: seconds the cluster may be without any worker before the job gives up.
    mmap=False reads the weights into each worker's own memory; with mmap=True workers on one machine share
    the pages of what the forward reads as stored (the linear layers are packed into each worker's memory).
    precision: "fp32", "bf16" or "int8", as `npvitpose.load`.
    task_people: about this many people per image task (fewer if that would leave workers idle).
    """
    def fail(path, message):
        raise NpvitposeError(message)

    records, _ = run(client, inputs, boxes, model, options, vis, on_error or fail, mmap=mmap, timeout=timeout,
                     task_people=task_people, precision=precision)
    return records


def run(client, inputs, boxes, model, options, vis, on_error, progress=False, mmap=True, timeout=60.0, cache=None,
        task_people=TASK_PEOPLE, sink=None, precision="fp32"):
    """`infer` for the command -> (records, number of inputs failed); progress: a bar on stderr, or an
    object whose update(n) is called as results come in; sink(header, records) as `run.run` calls it, in order."""
    from . import fetch
    from .model import load

    inputs = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    if isinstance(boxes, (str, os.PathLike)):
        boxes = Detections(os.fspath(boxes), options.box_format, options.bbox_thr)
    elif not hasattr(boxes, "for_image"):
        boxes = _plain(boxes, inputs, options)
    check_job(inputs, boxes)
    spec = os.fspath(model)
    path = fetch.resolve(spec, cache)
    here = load(path, mmap=True)  # the metadata every worker must match; Runner checks the options against it
    Runner(here, options)
    targets = vis_targets(vis, inputs) if vis is None or isinstance(vis, (str, os.PathLike)) else list(vis)
    plugin = ModelPlugin(path, None if os.path.exists(spec) else spec, mmap, here.meta, precision)
    workers = _workers(client, timeout)
    try:
        client.register_plugin(plugin, name=plugin.name)
    except NpvitposeError:
        with contextlib.suppress(Exception):  # a plugin that failed must not stay registered for later workers
            client.unregister_worker_plugin(plugin.name)
        raise
    job = _Job(client, plugin.name, options, on_error, timeout, task_people, sink)
    if is_video(inputs[0]):
        return job.video(inputs[0], boxes, targets[0], here, workers, progress)
    return job.images(inputs, boxes, targets, workers, progress)


def _plain(boxes, inputs, options):
    """A box list ([x, y, w, h(, score)] rows) for the one input, image or video."""
    from .boxes import id_for_file, parse_boxes

    if len(inputs) != 1:
        raise NpvitposeError("a plain box list is for one input; for several, use COCO detection results")
    found = parse_boxes(np.asarray(boxes).tolist() if isinstance(boxes, np.ndarray) else boxes,
                        options.box_format, options.bbox_thr, "boxes")
    image_id = id_for_file(inputs[0])  # as run.Detections names a plain list's image
    return _Given(images={inputs[0]: (0 if image_id is None else image_id, *found)}, default=found)


def _workers(client, timeout):
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise NpvitposeError(f"no Dask worker joined the scheduler within {timeout:g} s") from None
    return max(len(client.scheduler_info().get("workers", {})), 1)


def _cost(boxes):
    return len(boxes) + EMPTY_COST


class _Job:
    """Submits the tasks of one job and takes their results in submission order."""

    def __init__(self, client, plugin_name, options, on_error, timeout, task_people, sink):
        self.client, self.plugin, self.options = client, plugin_name, options
        self.on_error, self.timeout, self.task_people, self.sink = on_error, timeout, task_people, sink
        self.token = uuid.uuid4().hex[:12]
        self.failed, self.progress = 0, None

    def submit(self, fn, i, *args):
        return self.client.submit(fn, self.plugin, self.options, *args, key=f"npvitpose-{self.token}-{i}", pure=False)

    def results(self, futures):
        """Each future's result in order; a KilledWorker for a task that took several workers down with it."""
        try:
            for future in futures:
                yield self._result(future)
                future.release()
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def _result(self, future):
        alone = 0.0  # seconds the cluster has been without a worker
        while True:
            try:
                return future.result(timeout=POLL)
            except KilledWorker as e:
                return e
            except TimeoutError:
                if self.client.scheduler_info().get("workers"):
                    alone = 0.0
                    continue
                alone += POLL
                if alone >= self.timeout:
                    raise NpvitposeError(f"the Dask cluster has been without workers for {self.timeout:g} s") from None

    def fail(self, path, message):
        self.failed += 1
        self.on_error(path, message)  # messages.error ends a progress bar's line first

    def track(self, progress, total, label, unit):
        from .messages import Progress

        if progress is True:
            progress = Progress(total, label, unit=unit) if total != 1 or unit == "frames" else None
        self.progress = progress or None

    def step(self, n):
        if self.progress is not None:
            self.progress.update(n)

    def close(self):
        if hasattr(self.progress, "close"):
            self.progress.close()

    def images(self, inputs, boxes, targets, workers, progress):
        if isinstance(boxes, Detections):  # only each task's own boxes travel with it
            given = {}
            for path in inputs:
                try:
                    given[path] = boxes.for_image(path, None)
                except NpvitposeError as e:
                    given[path] = str(e)
            costs = [EMPTY_COST if isinstance(given[p], str) else _cost(given[p][1]) for p in inputs]
            cut = lambda a, b: _Given(images={p: given[p] for p in inputs[a:b]})  # noqa: E731
        else:  # a source of its own (a detector) runs on the worker, which reads the image
            costs, cut = [1.0] * len(inputs), lambda a, b: _part(boxes, inputs[a:b])  # noqa: E731
        ranges = split(costs, workers, self.task_people)
        futures = [self.submit(images_task, i, list(zip(inputs[a:b], targets[a:b])), cut(a, b))
                   for i, (a, b) in enumerate(ranges)]
        records = []
        self.track(progress, len(inputs), "images", "images")
        for (a, b), result in zip(ranges, self.results(futures)):
            if isinstance(result, KilledWorker):
                result = [f"{path}: {_killed(result)}" for path in inputs[a:b]]
            for path, entry in zip(inputs[a:b], result):
                if isinstance(entry, str):
                    self.fail(path, entry)
                    continue
                records.extend(entry[1])
                if self.sink is not None:
                    self.sink({"image_id": entry[0], "file": os.fspath(path)}, entry[1])
            self.step(b - a)
        self.close()
        return records, self.failed

    def video(self, path, boxes, target, model, workers, progress):
        import cv2

        from .run import VideoTracks, process_video, video_fps

        if not os.path.isfile(path):
            self.fail(path, f"cannot read video {path!r}: no such file")
            return [], self.failed
        with cv_path(path) as name:
            capture = cv2.VideoCapture(name)
        opened = capture.isOpened()
        announced = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0) if opened else 0
        fps = video_fps(capture) if opened else 25.0
        capture.release()
        if isinstance(boxes, Detections):
            costs = [_cost(boxes.for_frame(i, None)[0]) for i in range(announced)]
        else:  # a detector: every frame alike
            costs = [1.0] * announced
        ranges = _aligned(split(costs, workers, self.task_people), self.options.det_every) or [(0, None)]
        ranges[-1] = (ranges[-1][0], None)  # the last range reads to the end, whatever count the file announced
        futures = [self.submit(frames_task, i, path, a, b, _frames_given(boxes, a, b))
                   for i, (a, b) in enumerate(ranges)]
        runner = Runner(model, self.options)
        tracks = VideoTracks(runner)  # track ids over the frames in order, as one process makes them
        frames, records, arrays = 0, [], []
        self.track(progress, announced or None, os.path.basename(path), "frames")
        try:
            for (a, b), result in zip(ranges, self.results(futures)):
                if isinstance(result, KilledWorker):
                    raise NpvitposeError(_killed(result))
                read, kept = result
                self.step(read)
                if a != frames:  # after an early end (a frame that does not decode) one process stops: so do we
                    continue
                frames += read
                if target is not None:
                    arrays.extend(kept)
                    continue
                for index, predicted in enumerate(kept, a):
                    frame_records = tracks.frame(index, *predicted)[0]
                    records.extend(frame_records)
                    if self.sink is not None:
                        self.sink({"image_id": index, "time": round(index / fps, 4)}, frame_records)
        except NpvitposeError as e:
            self.fail(path, failure_message(path, e))
            return [], self.failed
        finally:
            self.close()
        if frames == 0:
            self.fail(path, f"cannot read video {path!r}: no frame could be decoded")
            return [], self.failed
        if target is not None:  # drawn here through the code of one process: the same file as one process
            return process_video(_Replay(runner, arrays), _Given(), path, target, self.sink), self.failed
        if announced and frames < announced:
            from .messages import warn

            warn(f"{path}: read {frames} of {announced} announced frames")
        return records, self.failed


def _aligned(ranges, every):
    """Ranges cut only at multiples of `every` (--det-every): each then starts on a detection frame."""
    cuts = sorted({a - a % every for a, _ in ranges})
    return [(a, b) for a, b in zip(cuts, cuts[1:] + [ranges[-1][1]])] if ranges else []


def _part(source, paths):
    """A boxes source of its own, for the inputs of one task: run.DetectedBoxes numbers the images it
    cannot name by their place among all inputs; only these inputs' places travel."""
    import copy

    if not hasattr(source, "order"):
        return source
    part = copy.copy(source)
    part.order = {os.fspath(p): source.order[os.fspath(p)] for p in paths if os.fspath(p) in source.order}
    return part


def _frames_given(boxes, a, b):
    """The boxes of frames [a, b) (b None: to the end) that travel with a video task."""
    if not isinstance(boxes, Detections):
        return boxes  # a source of its own (a detector) travels whole and runs on the worker
    if boxes.plain is not None:
        return _Given(default=boxes.plain)
    frames = [k for k in boxes.groups if isinstance(k, int) and k >= a and (b is None or k < b)]
    return _Given(frames={k: boxes.groups[k] for k in frames})


class _Replay:
    """A Runner whose predictions were made on the workers, handed out frame after frame."""

    def __init__(self, runner, arrays):
        self.runner, self.arrays, self.next = runner, arrays, 0
        self.options, self.sigmas = runner.options, runner.sigmas

    def predict(self, image, boxes, box_scores, with_box_scores=False):
        if self.next >= len(self.arrays):
            raise NpvitposeError("the video gave the client more frames than it gave the workers")
        self.next += 1
        result = self.arrays[self.next - 1]
        return result if with_box_scores else result[:4]

    def records(self, *args):
        return self.runner.records(*args)

    def draw(self, *args):
        return self.runner.draw(*args)


def _killed(e):
    return f"its task died with its worker {e.allowed_failures + 1} times, and Dask gave up on it (KilledWorker)"


# ---------------------------------------------------------------------------------------------- connect


def local_spec(address):
    """'local:N' -> N, or None for a scheduler address."""
    if not address.startswith("local:"):
        return None
    text = address[len("local:"):]
    if not text.isdecimal() or not 1 <= int(text) <= 256:
        raise NpvitposeError(f"--dask {address!r}: local:N needs a worker count N from 1 to 256")
    return int(text)


@contextlib.contextmanager
def connect(address, threads=None, timeout=10.0, quiet=True):
    """A Client of the scheduler at `address`, or of a LocalCluster of N worker processes ('local:N',
    loopback only, `threads` each: by default the cores shared out), closed on exit."""
    if quiet:  # the command speaks in its own one-line errors; Dask's log lines (a worker lost, restarted) are noise
        logging.getLogger("distributed").setLevel(logging.ERROR)
    n = local_spec(address)
    if n is not None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = threads or max(1, cores // n)
        with LocalCluster(n_workers=n, threads_per_worker=threads, processes=True, host="127.0.0.1",
                          dashboard_address=None, scheduler_kwargs=LOOPBACK_HTTP,
                          silence_logs=logging.ERROR if quiet else logging.WARNING) as cluster:
            with Client(cluster, set_as_default=False) as client:
                yield client
        return
    _probe(address, timeout)
    with Client(address, timeout=timeout, set_as_default=False) as client:
        yield client


def _probe(address, timeout):
    """Refuse a scheduler address that is malformed or does not answer, in at most `timeout` seconds, before
    a Client is built: a Client that fails to connect spends as long again closing, with a traceback."""
    import asyncio

    from distributed.comm import connect as comm_connect
    from distributed.security import Security

    async def attempt():
        comm = await comm_connect(address, timeout=timeout, **Security().get_connection_args("client"))
        await comm.close()

    try:
        asyncio.run(attempt())
    except ValueError as e:
        raise NpvitposeError(f"--dask {address!r}: not a scheduler address ({e})") from None
    except (OSError, TimeoutError) as e:
        raise NpvitposeError(f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
                             f"({type(e).__name__})") from None
