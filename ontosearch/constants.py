"""Values that several parts of the system must agree on.

Defined once here and imported everywhere (the Pulumi components, the task's
containers, the local replica, the Lambdas and the tests). Nothing in this
module imports third-party packages, so the components can read it cheaply.
"""

from __future__ import annotations

# The chromadb client pinned in requirements.txt and the server image tag must
# be the same version: a persist directory migrates one way only.
CHROMA_VERSION = "1.5.9"
CHROMA_IMAGE = f"chromadb/chroma:{CHROMA_VERSION}"

# Official nginx image for the auth proxy sidecar. The proxy config only uses
# directives that both this image and Debian's nginx (1.22) understand.
NGINX_IMAGE = "nginx:1.28.0"

# Inside a task: Chroma listens on loopback only; the proxy is the only port
# mapped, and so the only way in.
CHROMA_HOST = "127.0.0.1"
CHROMA_PORT = 8000
PROXY_PORT = 8080

# Timeouts along a request, ALB -> proxy -> Chroma. The proxy waits this long for Chroma (nginx
# proxy_read_timeout / proxy_send_timeout: between two reads or writes of the upstream connection).
PROXY_UPSTREAM_TIMEOUT_SECONDS = 300
# The ALB's idle timeout is longer, so a slow query ends with the proxy's own 504 instead of the ALB
# cutting the connection first (the ALB default is 60 s).
ALB_IDLE_TIMEOUT_SECONDS = PROXY_UPSTREAM_TIMEOUT_SECONDS + 30
# nginx keeps an idle client connection open longer than the ALB does: AWS asks for an application
# idle timeout larger than the load balancer's, else the ALB may send a request on a connection nginx
# just closed and answer 502 (docs.aws.amazon.com/elasticloadbalancing/latest/application/
# edit-load-balancer-attributes.html#connection-idle-timeout). The image's nginx.conf says 65 s.
PROXY_KEEPALIVE_TIMEOUT_SECONDS = ALB_IDLE_TIMEOUT_SECONDS + 30

# Where Chroma keeps its persist directory in the task (the official image's
# data path; a volume mounted elsewhere silently loses data).
DATA_DIR = "/data"

# The two token transports of the chromadb client.
TOKEN_HEADER = "X-Chroma-Token"
AUTHORIZATION_HEADER = "Authorization"

# Health endpoints of Chroma 1.x (/api/v1/* answers 410).
HEARTBEAT_PATH = "/api/v2/heartbeat"
HEALTHCHECK_PATH = "/api/v2/healthcheck"

# Environment variables read by connect(), serve and the task containers.
ENV_URL = "CHROMA_URL"
ENV_TOKEN = "CHROMA_TOKEN"
ENV_ADMIN_TOKEN = "CHROMA_ADMIN_TOKEN"
ENV_TOKEN_SECRET_ARN = "CHROMA_TOKEN_SECRET_ARN"
ENV_PATH = "CHROMA_PATH"

# Proxy tokens are letters and digits only (the proxy pastes them into regexes) and at least this long.
TOKEN_MIN_LENGTH = 16

# Snapshot layout (ARCHITECTURE.md section 4).
SNAPSHOT_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SNAPSHOT_PREFIX = "snapshots"
POINTER_NAME = "LATEST"
POINTER_KEY = f"{SNAPSHOT_PREFIX}/{POINTER_NAME}"
# Written into a restored persist directory (the manifest of the snapshot it holds), last, so its
# presence means the restore completed; `serve`, connect() and the matcher read the embedder from it.
RESTORED_MANIFEST_NAME = ".ontosearch-snapshot.json"

# Ontologies and the names users may call them by.
ONTOLOGIES = ("cl", "uberon", "mondo")
ONTOLOGY_ALIASES = {
    "cl": "cl",
    "cell_ontology": "cl",
    "cell_type": "cl",
    "celltype": "cl",
    "uberon": "uberon",
    "tissue": "uberon",
    "anatomy": "uberon",
    "mondo": "mondo",
    "disease": "mondo",
}

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# The same model with its weights quantized to int8 (`embedders.int8_embedder`): its own name, since
# its vectors differ from the float32 model's, so a collection never mixes the two.
INT8_EMBEDDER = "all-MiniLM-L6-v2-int8"
SAPBERT_MODEL = "cambridgeltl/SapBERT-from-PubMedBERT-fulltext"

# Batch workflow (issue 4): container names of the on-demand task that the state machine overrides,
# the task agent's environment (set per execution by RunTask overrides) and the S3 prefixes the
# workflow reads and writes in the stack's bucket.
RESTORE_CONTAINER = "restore"
CHROMA_CONTAINER = "chroma"
PROXY_CONTAINER = "proxy"
TASK_AGENT_CONTAINER = "task-agent"
ENV_TASK_TOKEN = "TASK_TOKEN"
ENV_TASK_EXECUTION_START = "TASK_EXECUTION_START"
ENV_TASK_DEADLINE_SECONDS = "TASK_DEADLINE_SECONDS"
ENV_TASK_READY_TIMEOUT_SECONDS = "TASK_READY_TIMEOUT_SECONDS"
ENV_TASK_HEARTBEAT_SECONDS = "TASK_HEARTBEAT_SECONDS"
ENV_TASK_URL = "TASK_URL"
WORKFLOW_INPUT_PREFIX = "inputs/"
WORKFLOW_WORK_PREFIX = "work/"
WORKFLOW_RESULTS_PREFIX = "results/"
# work/<execution>/<this>: the save request the task agent polls for (its role may list only these)
SAVE_REQUEST_NAME = "save-request.json"
# Environment of the workflow's Lambdas (set by the BatchWorkflow component, read by lambdas/).
ENV_WORKFLOW_BUCKET = "WORKFLOW_BUCKET"
ENV_WORKFLOW_CHUNK_SIZE = "WORKFLOW_CHUNK_SIZE"
ENV_TASK_EXECUTION_NAME = "TASK_EXECUTION_NAME"
