"""Container images of the task, built at `pulumi up` and pushed to ECR repositories the stack owns.

Tasks never pull from Docker Hub at start (rate limits, an outside dependency on every scale-out):
the official Chroma and nginx images are mirrored into ECR under their own version tags, so the
Chroma tag visibly equals the pinned chromadb client version, and the project's image (restore
step, task agent) is built from `docker/Dockerfile`. All for linux/arm64 (the task is ARM64).
Task definitions reference images by digest (`ref`), so a rebuild rolls out a new revision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from ontosearch import constants as c

PLATFORM = docker_build.Platform.LINUX_ARM64
APP_DOCKERFILE = "docker/Dockerfile"
MIRROR_CONTEXT = "docker/mirror"
APP_TAG = "latest"

# Keep the newest images, expire the rest (each `up` with changed code pushes a new digest).
LIFECYCLE_POLICY = json.dumps({
    "rules": [{
        "rulePriority": 1,
        "description": "keep the 20 newest images",
        "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 20},
        "action": {"type": "expire"},
    }],
})


def image_tag(image: str) -> str:
    """`chromadb/chroma:1.5.9` -> `1.5.9`."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        raise ValueError(f"image {image!r} has no tag; pin a version")
    return tag


def mirror_dockerfile(image: str) -> str:
    return f"FROM {image}\n"


def digest_uri(repository_url: str, digest: str) -> str:
    """`<repository>@sha256:<hex>`: the image reference a Lambda function's `ImageUri` accepts.

    Lambda takes `repo:tag` or `repo@sha256:digest` but refuses `repo:tag@sha256:digest`, the form of
    `docker_build.Image.ref` ("Source image ... is not valid. Provide a valid source image"; see
    https://github.com/pulumi/pulumi-docker-build/issues/571 and
    https://docs.aws.amazon.com/lambda/latest/dg/images-create.html). The digest pins the exact build,
    so a rebuild updates the functions.
    """
    if not digest.startswith("sha256:") or len(digest) != len("sha256:") + 64:
        raise ValueError(f"image digest {digest!r} is not sha256:<64 hex digits>; was the image pushed?")
    if "@" in repository_url or ":" in repository_url.rpartition("/")[2]:
        raise ValueError(f"{repository_url!r} is not a bare repository URL (it carries a tag or digest)")
    return f"{repository_url}@{digest}"


@dataclass
class ImagesArgs:
    # Build context of the project image (the repository root, where `pulumi up` runs).
    context: str = "."
    deletion_protection: bool = False


class Images(pulumi.ComponentResource):
    app_image: pulumi.Output[str]
    chroma_image: pulumi.Output[str]
    proxy_image: pulumi.Output[str]
    repository_arns: pulumi.Output[list[str]]

    def __init__(self, name: str, args: ImagesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ontosearch:infra:Images", name, {}, opts)
        builds = {
            "app": (docker_build.DockerfileArgs(location=APP_DOCKERFILE), args.context, APP_TAG),
            "chroma": (docker_build.DockerfileArgs(inline=mirror_dockerfile(c.CHROMA_IMAGE)), MIRROR_CONTEXT,
                       image_tag(c.CHROMA_IMAGE)),
            "nginx": (docker_build.DockerfileArgs(inline=mirror_dockerfile(c.NGINX_IMAGE)), MIRROR_CONTEXT,
                      image_tag(c.NGINX_IMAGE)),
        }
        refs: dict[str, pulumi.Output[str]] = {}
        arns: list[pulumi.Output[str]] = []
        for role, (dockerfile, context, tag) in builds.items():
            repo = aws.ecr.Repository(
                f"{name}-{role}",
                image_scanning_configuration={"scan_on_push": True},
                image_tag_mutability="MUTABLE",
                encryption_configurations=[{"encryption_type": "AES256"}],
                force_delete=not args.deletion_protection,
                opts=pulumi.ResourceOptions(parent=self),
            )
            aws.ecr.LifecyclePolicy(f"{name}-{role}", repository=repo.name, policy=LIFECYCLE_POLICY,
                                    opts=pulumi.ResourceOptions(parent=self))
            auth = aws.ecr.get_authorization_token_output(
                registry_id=repo.registry_id, opts=pulumi.InvokeOutputOptions(parent=self))
            image = docker_build.Image(
                f"{name}-{role}",
                context=docker_build.BuildContextArgs(location=context),
                dockerfile=dockerfile,
                platforms=[PLATFORM],
                push=True,
                tags=[repo.repository_url.apply(lambda url, t=tag: f"{url}:{t}")],
                registries=[docker_build.RegistryArgs(
                    address=repo.repository_url,
                    username=auth.user_name,
                    password=pulumi.Output.secret(auth.password),
                )],
                opts=pulumi.ResourceOptions(parent=self),
            )
            refs[role] = image.ref
            arns.append(repo.arn)

        self.app_image = refs["app"]
        self.chroma_image = refs["chroma"]
        self.proxy_image = refs["nginx"]
        self.repository_arns = pulumi.Output.all(*arns).apply(list)
        self.register_outputs({
            "app_image": self.app_image,
            "chroma_image": self.chroma_image,
            "proxy_image": self.proxy_image,
            "repository_arns": self.repository_arns,
        })
