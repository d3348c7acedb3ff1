"""The on-host part of `ollama-fleet INVENTORY backup HOST`.

Run by that command (`pyinfra -y INVENTORY tasks/deploys/backup.py --limit HOST`), which
writes the job (tarball name, where to fetch it to) to the file named by
OLLAMA_FLEET_BACKUP_JOB. The host's data is validated like deploy.py does.
"""

from ollama_fleet.tasks.kit import lock
from ollama_fleet.tasks.kit.fleet import current_settings
from ollama_fleet.tasks.steps import backup

settings = current_settings()  # stops the run on bad inventory data, hosts untouched
lock.take("ollama-fleet backup")  # one run at a time per host (tasks/kit/lock.py)
job = backup.load_job()

if job["action"] == "clean":
    backup.clean(settings, job)  # after a failed run: what it left on the host
else:
    backup.back_up(settings, job)  # archived on the host, fetched, host copy removed
