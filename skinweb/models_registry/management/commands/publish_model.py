from django.core.management.base import BaseCommand, CommandError

from classifier.modelfile import ModelFileError
from skinweb.models_registry.models import ModelVersion
from skinweb.models_registry.tasks import request_fast_path


class Command(BaseCommand):
    help = "Register a model file (.safetensors) and publish it for the workers."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--reason", default="published from the command line")
        parser.add_argument("--operating-point", metavar="JSON",
                            help="an operating point file for these weights (classifier.operatingpoint): publish "
                                 "the version it makes, with its own threshold, band and early decisions")

    def handle(self, path, reason, operating_point=None, **options):
        try:
            version = ModelVersion.import_file(path, operating_point=operating_point)
        except ModelFileError as exc:
            raise CommandError(str(exc)) from exc
        if version.status == ModelVersion.Status.PUBLISHED:
            self.stdout.write(f"model {version.version} is already published")
            return
        version.publish(reason=reason)
        self.stdout.write(self.style.SUCCESS(f"published model {version.version} (threshold {version.threshold:.3f})"))
        if request_fast_path(version):
            self.stdout.write("a worker builds its fast CPU artefacts (ONNX fp32 and int8) in the background")
