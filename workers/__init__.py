"""Celery workers for backup: the application (:mod:`workers.app`), thin tasks
(:mod:`workers.tasks`) and the scheduler (:mod:`workers.scheduler`). All logic lives in the
``backup`` library; a task is a job id and a call into :class:`backup.jobs.runner.Runner`."""
