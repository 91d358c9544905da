"""Calico's CNI log: `log_file_path` at `log_level`, rotated like Calico's (lumberjack).

Each plugin call gets its own `CalicoLog`, configured from its own network
configuration: nothing process-wide (the root logger, handlers, levels) is touched,
so calls with different settings can run side by side in one agent process.
Writers of one file (threads and processes) serialize on an flock'ed sidecar lock
file, so a line is never interleaved and rotation happens once: when the file would
pass `log_file_max_size` MB it is renamed to `<name>-<UTC time>.<ext>`, and backups
beyond `log_file_max_count` or older than `log_file_max_age` days are removed.

A line reads like Calico's:
    2024-01-15 10:00:00.123 [INFO][4242] cni-plugin Calico CNI ADD ContainerID="abc" Pod="web"
"""

from __future__ import annotations

import datetime
import fcntl
import glob
import logging
import os
import threading
import time
from typing import Any

LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "fatal": 50, "panic": 50}
_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "FATAL"}
_path_locks: dict[str, threading.Lock] = {}
_path_locks_guard = threading.Lock()


def _thread_lock(path: str) -> threading.Lock:
    with _path_locks_guard:
        return _path_locks.setdefault(path, threading.Lock())


class RotatingFile:
    """Appends lines to one log file, rotating it; safe across threads and processes."""

    def __init__(self, path: str, max_size_mb: int = 100, max_age_days: int = 30, max_count: int = 10) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = (max_size_mb or 100) * 1024 * 1024
        self.max_age = (max_age_days or 30) * 86400
        self.max_count = max_count or 10
        directory, name = os.path.split(self.path)
        self.lock_path = os.path.join(directory, f".{name}.lock")
        stem, ext = os.path.splitext(name)
        self.backup_glob = os.path.join(directory, f"{stem}-*{ext}")
        self.backup_fmt = os.path.join(directory, stem + "-{}" + ext)

    def write(self, line: str) -> None:
        data = line.encode(errors="replace")
        with _thread_lock(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            lock_fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    size = os.stat(self.path).st_size
                except FileNotFoundError:
                    size = 0
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            finally:
                os.close(lock_fd)  # closing releases the flock

    def _rotate(self) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3]
        target = self.backup_fmt.format(stamp)
        suffix = 0
        while os.path.exists(target):
            suffix += 1
            target = self.backup_fmt.format(f"{stamp}.{suffix}")
        os.rename(self.path, target)
        backups = sorted(glob.glob(self.backup_glob), reverse=True)
        cutoff = time.time() - self.max_age
        for index, backup in enumerate(backups):
            try:
                if index >= self.max_count or os.stat(backup).st_mtime < cutoff:
                    os.unlink(backup)
            except OSError:
                continue


def _format_fields(fields: dict[str, Any]) -> str:
    return " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in sorted(fields.items()) if v not in ("", None))


class CalicoLog:
    """A per-call logger with Calico's line format and logrus-style fields."""

    def __init__(
        self,
        component: str,
        level: str = "info",
        file: RotatingFile | None = None,
        fallback: logging.LoggerAdapter[logging.Logger] | logging.Logger | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.component = component
        self.level = LEVELS.get(level.lower(), 20)
        self.file = file
        self.fallback = fallback
        self.fields = dict(fields or {})

    def with_fields(self, **fields: Any) -> CalicoLog:
        return CalicoLog(
            self.component, _NAMES.get(self.level, "info").lower(), self.file, self.fallback, {**self.fields, **fields}
        )

    def for_component(self, component: str, fallback: logging.LoggerAdapter[logging.Logger] | logging.Logger | None) -> CalicoLog:
        """The same file, level and fields for another component's lines (calico-ipam's in calico's call)."""
        return CalicoLog(component, _NAMES.get(self.level, "info").lower(), self.file, fallback, self.fields)

    def _emit(self, level: int, msg: str, args: tuple[Any, ...]) -> None:
        if level < self.level:
            return
        text = msg % args if args else msg
        fields = _format_fields(self.fields)
        if self.file is not None:
            now = datetime.datetime.now()
            stamp = now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d}"
            line = f"{stamp} [{_NAMES[level]}][{os.getpid()}] {self.component} {text}"
            try:
                self.file.write(line + (f" {fields}" if fields else "") + "\n")
            except OSError:
                pass  # logging must never fail a plugin call
        elif self.fallback is not None:
            self.fallback.log(level, "%s%s", text, f" {fields}" if fields else "")

    def debug(self, msg: str, *args: Any) -> None:
        self._emit(10, msg, args)

    def info(self, msg: str, *args: Any) -> None:
        self._emit(20, msg, args)

    def warning(self, msg: str, *args: Any) -> None:
        self._emit(30, msg, args)

    def error(self, msg: str, *args: Any) -> None:
        self._emit(40, msg, args)


def for_call(
    component: str,
    log_file_path: str,
    level: str,
    max_size: int,
    max_age: int,
    max_count: int,
    fallback: logging.LoggerAdapter[logging.Logger] | logging.Logger | None,
) -> CalicoLog:
    file = RotatingFile(log_file_path, max_size, max_age, max_count) if log_file_path else None
    return CalicoLog(component, level, file, fallback)
