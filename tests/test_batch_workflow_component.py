"""BatchWorkflow under Pulumi mocks: switched per stack, wiring of ARNs, security groups, IAM scope."""

from __future__ import annotations

import fnmatch
import json
import re

import pytest
from pulumi_harness import (
    botocore_errors,
    container_definitions,
    policies_of_role,
    policy_documents,
    security_group_rules,
    synth_stack,
    synth_with,
)

from components.synth import MOCK_ACCOUNT
from ontosearch import constants as c
from ontosearch.workflow import definition as wd
from ontosearch.workflow import steps

STEPS = ("validate", "split", "query", "merge", "save")
SFN = "aws:sfn/stateMachine:StateMachine"
FUNCTION = "aws:lambda/function:Function"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


@pytest.fixture(scope="module", params=["dev", "prod"])
def stack(request):
    result = synth_with(request.param, {"ontosearch:batchWorkflow": True, "ontosearch:mapConcurrency": 12,
                                        "ontosearch:workflowTimeoutSeconds": 5400})
    return request.param, result


def arn(result, typ: str, name: str | None = None) -> str:
    return result.one(typ, name).state["arn"]


def policy(result, name: str) -> dict:
    return json.loads(result.one(ROLE_POLICY, name).raw_inputs["policy"])


def statements(doc: dict) -> list[dict]:
    return doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _workflow_resources(result) -> dict[str, int]:
    return {typ: len(result.of_type(typ)) for typ in (SFN, "ontosearch:workflow:BatchWorkflow", FUNCTION)}


def test_workflow_is_off_unless_the_stack_turns_it_on() -> None:
    off = {SFN: 0, "ontosearch:workflow:BatchWorkflow": 0, FUNCTION: 0}
    assert _workflow_resources(synth_stack("prod")) == off
    assert _workflow_resources(synth_with("dev", {"ontosearch:batchWorkflow": False})) == off
    assert _workflow_resources(synth_with("prod", {"ontosearch:batchWorkflow": True})) == {
        SFN: 1, "ontosearch:workflow:BatchWorkflow": 1, FUNCTION: len(STEPS)}


def test_the_committed_dev_stack_deploys_the_workflow() -> None:
    """`pulumi up` on dev deploys the batch workflow: its stack file turns it on."""
    from pulumi_harness import stack_file_config

    assert stack_file_config("dev")["ontosearch:batchWorkflow"] is True
    result = synth_stack("dev")
    on = {SFN: 1, "ontosearch:workflow:BatchWorkflow": 1, FUNCTION: len(STEPS)}
    assert _workflow_resources(result) == on
    assert result.outputs["batch_state_machine_arn"] == result.one(SFN).state["arn"]
    assert result.outputs["batch_task_definition_arn"] == arn(
        result, "aws:ecs/taskDefinition:TaskDefinition", "batch-task")


def test_state_machine_deploys_the_shared_definition_with_the_stack_arns(stack) -> None:
    _, result = stack
    deployed = json.loads(result.one(SFN).raw_inputs["definition"])
    cluster = arn(result, "aws:ecs/cluster:Cluster")
    task_def = arn(result, "aws:ecs/taskDefinition:TaskDefinition", "batch-task")
    task_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "batch-task-sg").id
    subnets = result.one(FUNCTION, "batch-query").raw_inputs["vpcConfig"]["subnetIds"]
    expected = wd.build_definition(wd.WorkflowSettings(
        cluster_arn=cluster, task_definition_arn=task_def, subnet_ids=subnets, security_group_ids=[task_sg],
        **{f"{s}_function": arn(result, FUNCTION, f"batch-{s}") for s in STEPS},
        map_concurrency=12, workflow_timeout_seconds=5400, chunk_timeout_seconds=300,
    ))
    assert deployed == expected
    assert deployed["TimeoutSeconds"] == 5400
    assert deployed["States"]["QueryChunks"]["MaxConcurrency"] == 12
    # issue 11 point 8: the first heartbeat comes after Fargate provisioning and four image pulls
    assert deployed["States"]["StartTask"]["HeartbeatSeconds"] >= 300
    start = deployed["States"]["StartTask"]["Parameters"]
    assert start["TaskDefinition"] == task_def and start["Cluster"] == cluster
    assert start["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def test_task_accepts_the_proxy_port_only_from_the_lambdas(stack) -> None:
    _, result = stack
    lambda_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "batch-lambda-sg")
    task_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "batch-task-sg")
    ingress = [rule for sg, direction, rule in security_group_rules(result)
               if sg is task_sg and direction == "ingress"]
    assert ingress == [{**ingress[0], "protocol": "tcp", "fromPort": c.PROXY_PORT, "toPort": c.PROXY_PORT,
                        "securityGroups": [lambda_sg.id]}]
    assert not ingress[0].get("cidrBlocks")
    for step in STEPS:
        vpc = result.one(FUNCTION, f"batch-{step}").raw_inputs["vpcConfig"]
        assert vpc["securityGroupIds"] == [lambda_sg.id]
        assert vpc["subnetIds"], f"{step} must run in the private subnets"


def test_state_machine_role_is_scoped_to_its_task_cluster_roles_and_lambdas(stack) -> None:
    _, result = stack
    cluster = arn(result, "aws:ecs/cluster:Cluster")
    cluster_name = cluster.rsplit("/", 1)[-1]
    task_def = arn(result, "aws:ecs/taskDefinition:TaskDefinition", "batch-task")
    roles = {arn(result, "aws:iam/role:Role", "batch-task-role"),
             arn(result, "aws:iam/role:Role", "batch-execution-role")}
    functions = {arn(result, FUNCTION, f"batch-{s}") for s in STEPS}
    by_action: dict[str, list[dict]] = {}
    for st in statements(policy(result, "batch-sfn-policy")):
        for action in as_list(st["Action"]):
            by_action.setdefault(action, []).append(st)
    assert set(by_action) == {"ecs:RunTask", "iam:PassRole", "ecs:TagResource", "ecs:StopTask",
                              "ecs:ListTasks", "lambda:InvokeFunction",
                              # the QueryChunks Distributed Map (distributed_map_statements)
                              "states:StartExecution", "states:DescribeExecution", "states:StopExecution",
                              "s3:GetObject", "s3:PutObject", "s3:ListMultipartUploadParts",
                              "s3:AbortMultipartUpload"}
    (run,) = by_action["ecs:RunTask"]
    assert run["Resource"] == task_def.rsplit(":", 1)[0] + ":*"
    assert run["Condition"] == {"ArnEquals": {"ecs:cluster": cluster}}
    (passrole,) = by_action["iam:PassRole"]
    assert set(as_list(passrole["Resource"])) == roles
    assert passrole["Condition"]["StringEquals"]["iam:PassedToService"] == "ecs-tasks.amazonaws.com"
    (stop,) = by_action["ecs:StopTask"]
    assert all(f"/{cluster_name}/" in r for r in as_list(stop["Resource"]))
    assert stop["Condition"] == {"ArnEquals": {"ecs:cluster": cluster}}
    # a cluster-wide ListTasks is authorized on "*"; only the condition scopes it
    (listing,) = by_action["ecs:ListTasks"]
    assert listing["Resource"] == "*" and listing["Condition"] == {"ArnEquals": {"ecs:cluster": cluster}}
    (tag,) = by_action["ecs:TagResource"]
    assert all(f":task/{cluster_name}/" in r for r in as_list(tag["Resource"]))
    assert tag["Condition"] == {"StringEquals": {"ecs:CreateAction": "RunTask"}}
    (invoke,) = by_action["lambda:InvokeFunction"]
    assert {r.removesuffix(":*") for r in as_list(invoke["Resource"])} == functions


def test_the_distributed_map_may_run_its_children_and_reach_only_its_s3_objects(stack) -> None:
    """IAM policies for using Distributed Map states
    (https://docs.aws.amazon.com/step-functions/latest/dg/iam-policies-eg-dist-map.html): StartExecution
    on the machine itself, Describe/StopExecution on its child executions and on execution:<name>:*
    (the page's policy), s3:GetObject on the
    ItemReader's object, PutObject + multipart actions on the ResultWriter's prefix."""
    _, result = stack
    machine = result.one(SFN)
    name = machine.raw_inputs["name"]
    # Step Functions names: 1-80 characters (service-quotas.html, "General quotas")
    assert 1 <= len(name) <= 80 and re.fullmatch(r"[A-Za-z0-9_-]+", name)
    # the machine's own ARN, as Step Functions forms it: arn:aws:states:<region>:<account>:stateMachine:<name>
    machine_arn = f"arn:aws:states:us-east-1:{MOCK_ACCOUNT}:stateMachine:{name}"
    bucket = arn(result, "aws:s3/bucket:Bucket")
    work = f"{bucket}/{c.WORKFLOW_WORK_PREFIX}*"
    grants = {(action, resource) for st in statements(policy(result, "batch-sfn-policy"))
              for action in as_list(st["Action"]) for resource in as_list(st["Resource"])
              if action.startswith(("states:", "s3:"))}
    assert grants == {
        ("states:StartExecution", machine_arn),
        # its child executions (execution:<name>/<label>:<id>) and, as the page's policy names them,
        # execution:<name>:*
        *((action, f"arn:aws:states:us-east-1:{MOCK_ACCOUNT}:execution:{name}{tail}")
          for action in ("states:DescribeExecution", "states:StopExecution") for tail in ("/*", ":*")),
        ("s3:GetObject", f"{work}/{steps.CHUNK_MANIFEST_NAME}"),
        *((action, f"{work}/{steps.MAP_RESULTS_NAME}/*") for action in
          ("s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload")),
        ("s3:PutObject", f"{work}/{steps.CHUNK_FAILURE_NAME}"),
        ("s3:GetObject", f"{work}/{steps.CHUNK_FAILURE_NAME}"),
    }
    # the keys the steps use fall under those grants (IAM's * matches any characters)
    for key in (steps.chunk_manifest_key("e-1"), steps.chunk_failure_key("e-1"),
                steps.map_results_prefix("e-1") + "/run-id/manifest.json"):
        assert any(fnmatch.fnmatchcase(f"{bucket}/{key}", r) for _, r in grants), key


def test_a_long_stack_name_still_gives_a_valid_state_machine_name() -> None:
    from components.batch_workflow import state_machine_name

    assert state_machine_name("ontosearch", "dev") == "ontosearch-dev-batch"
    long = state_machine_name("ontosearch", "x" * 100)
    assert len(long) == 80 and re.fullmatch(r"[A-Za-z0-9_-]+", long)
    assert long != state_machine_name("ontosearch", "x" * 101)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", state_machine_name("my.project", "team/dev"))


def test_each_lambda_reads_and_writes_only_its_own_objects_and_only_query_reads_the_secret(stack) -> None:
    _, result = stack
    bucket = arn(result, "aws:s3/bucket:Bucket")
    read_secret = arn(result, "aws:secretsmanager/secret:Secret", "tokens-read")
    work = f"{bucket}/{c.WORKFLOW_WORK_PREFIX}*"  # each execution's folder
    allowed = {
        "validate": {("s3:GetObject", f"{bucket}/{c.WORKFLOW_INPUT_PREFIX}*"),
                     ("s3:GetObject", f"{bucket}/{c.SNAPSHOT_PREFIX}/*"),
                     ("s3:ListBucket", bucket)},
        "split": {("s3:GetObject", f"{bucket}/{c.WORKFLOW_INPUT_PREFIX}*"),
                  *((action, f"{work}/{key}") for action in ("s3:PutObject", "s3:AbortMultipartUpload")
                    for key in ("chunks/*", "rows.jsonl", "chunks.jsonl"))},
        "query": {("s3:GetObject", f"{work}/chunks/*"), ("s3:PutObject", f"{work}/parts/*")},
        "merge": {*(("s3:GetObject", f"{work}/{key}") for key in ("chunks.jsonl", "rows.jsonl", "parts/*")),
                  ("s3:PutObject", f"{bucket}/{c.WORKFLOW_RESULTS_PREFIX}*"),
                  ("s3:AbortMultipartUpload", f"{bucket}/{c.WORKFLOW_RESULTS_PREFIX}*")},
        "save": {("s3:PutObject", f"{work}/{c.SAVE_REQUEST_NAME}")},
    }
    query_env = result.one(FUNCTION, "batch-query").raw_inputs["environment"]["variables"]
    for step in STEPS:
        grants = set()
        secrets = []
        for st in statements(policy(result, f"batch-{step}-policy")):
            for action in as_list(st["Action"]):
                for resource in as_list(st["Resource"]):
                    if action == "s3:ListBucket":
                        # only keys under the snapshot prefix may be listed
                        assert st["Condition"] == {"StringLike": {"s3:prefix": [
                            f"{c.SNAPSHOT_PREFIX}/", f"{c.SNAPSHOT_PREFIX}/*"]}}, step
                        grants.add((action, resource))
                    elif action.startswith("s3:"):
                        grants.add((action, resource))
                    elif action == "secretsmanager:GetSecretValue":
                        secrets.append(resource)
                    elif action == "kms:Decrypt" and step == "query":
                        assert resource == arn(result, "aws:kms/key:Key")
                        assert "secretsmanager." in st["Condition"]["StringEquals"]["kms:ViaService"]
                    else:
                        pytest.fail(f"{step} Lambda may {action} on {resource}")
        assert grants == allowed[step], step
        if step == "query":
            assert secrets == [read_secret] == [query_env[c.ENV_TOKEN_SECRET_ARN]]
        else:
            assert not secrets, f"{step} must not read the token secret"
            env = result.one(FUNCTION, f"batch-{step}").raw_inputs["environment"]["variables"]
            assert c.ENV_TOKEN_SECRET_ARN not in env


def test_no_workflow_policy_grants_a_wildcard_action(stack) -> None:
    _, result = stack
    for resource, _key, doc in policy_documents(result):
        if not resource.name.startswith("batch"):
            continue
        for st in statements(doc):
            for action in as_list(st.get("Action", [])):
                assert action != "*" and not action.endswith(":*"), (resource.name, action)


def test_batch_task_may_decrypt_its_token_secrets_via_secrets_manager_only(stack) -> None:
    _, result = stack
    key = arn(result, "aws:kms/key:Key")
    decrypt = [st for st in statements(policy(result, "batch-execution-policy"))
               if "kms:Decrypt" in as_list(st["Action"])]
    assert [st["Resource"] for st in decrypt] == [key]
    assert decrypt[0]["Condition"]["StringEquals"]["kms:ViaService"].startswith("secretsmanager.")


def test_batch_task_has_an_essential_agent_with_the_token_only_as_a_secret(stack) -> None:
    _, result = stack
    containers = container_definitions(result, "batch-task")
    names = [x["name"] for x in containers]
    assert names[:3] == [c.RESTORE_CONTAINER, c.CHROMA_CONTAINER, c.PROXY_CONTAINER]
    agent = next(x for x in containers if x["name"] == c.TASK_AGENT_CONTAINER)
    assert agent["essential"] is True
    assert agent["command"] == ["python", "-m", "ontosearch", "task-agent"]
    assert [s["name"] for s in agent["secrets"]] == [c.ENV_TOKEN]
    assert all(e["name"] not in {c.ENV_TOKEN, c.ENV_ADMIN_TOKEN} for e in agent.get("environment", []))
    for container in containers:
        assert not botocore_errors("ecs", "RegisterTaskDefinition",
                                   {"family": "x", "containerDefinitions": [container]}), container["name"]


def test_lambdas_run_the_handlers_of_this_repository(stack) -> None:
    _, result = stack
    for step in STEPS:
        fn = result.one(FUNCTION, f"batch-{step}").raw_inputs
        assert fn["packageType"] == "Image"
        assert fn["imageConfig"]["commands"] == [f"lambdas.{step}.handler"]
        assert fn["architectures"] == ["arm64"]
        assert fn["environment"]["variables"][c.ENV_WORKFLOW_BUCKET]


def test_lambdas_and_the_state_machine_are_created_only_once_their_roles_hold_their_policies(stack) -> None:
    """CreateFunction checks the VPC permissions of the role, and a prebuilt image lets a function (or an
    execution right after `up`) run before an inline policy exists: each waits for its role's policies."""
    _, result = stack
    waiting = [*(result.one(FUNCTION, f"batch-{s}") for s in STEPS), result.one(SFN)]
    for resource in waiting:
        policies = policies_of_role(result, resource.raw_inputs["role"] if resource.type == FUNCTION
                                    else resource.raw_inputs["roleArn"])
        kinds = {urn.split("::")[-2].rsplit("$", 1)[-1] for urn in policies}
        assert "aws:iam/rolePolicy:RolePolicy" in kinds, resource.name
        if resource.type == FUNCTION:
            assert "aws:iam/rolePolicyAttachment:RolePolicyAttachment" in kinds  # VPC network interfaces
        assert policies <= set(resource.dependencies), f"{resource.name} does not wait for {policies}"


def test_bad_workflow_config_names_the_key() -> None:
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="ontosearch:mapConcurrency"):
        synth_with("dev", {"ontosearch:batchWorkflow": True, "ontosearch:mapConcurrency": 0})
    with pytest.raises(ConfigError, match="ontosearch:readyTimeoutSeconds must be between 360"):
        synth_with("dev", {"ontosearch:batchWorkflow": True, "ontosearch:readyTimeoutSeconds": 120})
    with pytest.raises(ConfigError, match="ontosearch:readyTimeoutSeconds"):
        synth_with("dev", {"ontosearch:batchWorkflow": True, "ontosearch:readyTimeoutSeconds": 900,
                           "ontosearch:workflowTimeoutSeconds": 600})


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
def test_policies_name_the_partition_the_stack_is_in(partition) -> None:
    """ARNs carry the partition (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference-arns.html):
    a policy that names arn:aws: resources grants nothing in aws-cn or aws-us-gov."""
    from components.batch_workflow import state_machine_arn_in, state_machine_policy
    from components.encryption import key_policy

    head = f"arn:{partition}:ecs:cn-north-1:123456789012"
    cluster = f"{head}:cluster/c1"
    policy = state_machine_policy(
        cluster, f"{head}:task-definition/fam:3",
        [f"arn:{partition}:iam::123456789012:role/r"],
        [f"arn:{partition}:lambda:cn-north-1:123456789012:function:f"],
        state_machine_arn=state_machine_arn_in(cluster, "m"),
        bucket_arn=f"arn:{partition}:s3:::b")
    key = key_policy("123456789012", "cn-north-1", partition)
    for document in (policy, key):
        arns = re.findall(r'"(arn:[^"]*)"', document)
        assert arns and all(a.startswith(f"arn:{partition}:") for a in arns), arns


def test_lambda_may_pull_the_image_it_was_built_into_for_this_accounts_functions_only(stack) -> None:
    """CreateFunction of an image function needs the repository to let lambda.amazonaws.com pull it
    (https://docs.aws.amazon.com/lambda/latest/dg/images-create.html): the stack's repository policy
    allows it for this account's functions, and every function waits for that policy."""
    from iam_evaluation import ALLOWED, Request, evaluate

    _, result = stack
    repo = result.one("aws:ecr/repository:Repository", "batch-lambda")
    pull = result.one("aws:ecr/repositoryPolicy:RepositoryPolicy", "batch-lambda-pull")
    assert pull.raw_inputs["repository"] == repo.state["name"]
    document = json.loads(pull.raw_inputs["policy"])
    region = result.one(FUNCTION, "batch-query").state["arn"].split(":")[3]
    for step in STEPS:
        function = result.one(FUNCTION, f"batch-{step}")
        assert function.raw_inputs["imageUri"].startswith(repo.state["repositoryUrl"] + "@sha256:")
        assert pull.urn in function.dependencies, step
        for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"):
            request = Request("", action, repo.state["arn"], {"aws:SourceArn": function.state["arn"]},
                              service_principal="lambda.amazonaws.com")
            assert evaluate(request, resource_policy=document) == ALLOWED, (step, action)
    other = f"arn:aws:lambda:{region}:999999999999:function:x"
    for source in (other, f"arn:aws:lambda:{region}:{MOCK_ACCOUNT}:layer:x"):
        request = Request("", "ecr:BatchGetImage", repo.state["arn"], {"aws:SourceArn": source},
                          service_principal="lambda.amazonaws.com")
        assert evaluate(request, resource_policy=document) != ALLOWED, source
    ours = other.replace("999999999999", MOCK_ACCOUNT)
    writes = Request("", "ecr:PutImage", repo.state["arn"], {"aws:SourceArn": ours},
                     service_principal="lambda.amazonaws.com")
    assert evaluate(writes, resource_policy=document) != ALLOWED
