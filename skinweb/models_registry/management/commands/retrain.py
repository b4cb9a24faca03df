from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from skinweb.models_registry import tasks, training


class Command(BaseCommand):
    help = ("Retrain from the published model version on TRAINING_DATASETS plus the cases marked for "
            "training. Queued for a worker on the 'training' queue, or run here with --here.")

    def add_arguments(self, parser):
        parser.add_argument("--epochs", type=int, help="default: RETRAIN_EPOCHS")
        parser.add_argument("--here", action="store_true", help="train in this process instead of a worker")

    def handle(self, epochs, here, **options):
        try:
            with transaction.atomic():
                version = training.start_run(None, epochs=epochs)
                if not here:
                    transaction.on_commit(lambda: tasks.train_model.delay(version.pk))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not here:
            self.stdout.write(f"training run {version.version} queued on the 'training' queue")
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
