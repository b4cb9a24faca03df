from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from skinweb.models_registry import tasks, training


class Command(BaseCommand):
    help = ("Retrain from the published model version on TRAINING_DATASETS plus the cases marked for "
            "training. Queued for a worker on the 'training' queue, or run here with --here.")

    def add_arguments(self, parser):
        parser.add_argument("--epochs", type=int, help="default: RETRAIN_EPOCHS")
        parser.add_argument("--here", action="store_true", help="train in this process instead of a worker")
        parser.add_argument("--resume", nargs="?", const="latest", metavar="VERSION",
                            help="continue a run that stopped part-way from its last checkpoint (default: the "
                                 "latest such run) instead of starting a new one")

    def handle(self, epochs, here, resume=None, **options):
        try:
            with transaction.atomic():
                if resume:
                    stopped = training.resumable_runs()
                    chosen = stopped[0] if resume == "latest" and stopped else next(
                        (v for v in stopped if v.version == resume), None)
                    if chosen is None:
                        raise ValueError("No stopped run with a checkpoint to resume"
                                         + ("." if resume == "latest" else f" is called {resume}."))
                    version = training.resume_run(chosen)
                else:
                    version = training.start_run(None, epochs=epochs)
                if not here:
                    transaction.on_commit(lambda: tasks.train_model.delay(version.pk))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not here:
            self.stdout.write(f"training run {version.version} {'resumed and ' if resume else ''}queued on the "
                              "'training' queue")
            return
        self.stdout.write(f"training run {version.version} from {version.parent.version} …")
        version = training.run_training(version.pk)
        if version.status != "candidate":
            raise CommandError(f"{version.version} {version.status}: {version.error}")
        ev = version.evaluation
        for name in ("candidate", "parent"):
            m = ev[name]["validation"]
            self.stdout.write(f"{name} {ev[name]['version']}: validation AUC {m['auc']:.4f}, sensitivity "
                              f"{m['sensitivity']:.3f}, specificity {m['specificity']:.3f}")
        self.stdout.write(self.style.SUCCESS(f"candidate {version.version} is ready; publish it from the Models page"))
