"""The on-host part of `ollama-fleet INVENTORY restore HOST TARBALL`.

Run by that command (`pyinfra -y INVENTORY tasks/deploys/restore.py --limit HOST`) once
it has checked the tarball; the job (tarball, what it holds) is in the file named by
OLLAMA_FLEET_BACKUP_JOB. The host's data is validated like deploy.py does.
"""

from ollama_fleet.tasks.kit import lock
from ollama_fleet.tasks.kit.fleet import current_settings
from ollama_fleet.tasks.steps import backup

settings = current_settings()  # stops the run on bad inventory data, hosts untouched
lock.take("ollama-fleet restore")  # one run at a time per host (tasks/kit/lock.py)
job = backup.load_job()

if job["action"] == "clean":
    backup.clean(settings, job)  # after a failed run: the restore's staging directory
else:
    backup.restore(settings, job)  # uploaded, checked, blobs first, manifests last; listed
