-- Push to several devices (docs/protocol.md amendment 22): what each subscription made of one push job, so
-- a retry goes only to the devices that failed transiently and never again to one that accepted.
-- Written only when an attempt ends in a retry (a job whose every device is settled needs no receipts: its
-- state row says it all). `version` is the job's notification version the receipt is for: a collapsed
-- notification's newer version (amendment 25) is new to every device, so an older version's receipt no
-- longer counts (the next receipt of that device replaces it).
CREATE TABLE push_receipts (
    job_id          text NOT NULL REFERENCES delivery_jobs (id) ON DELETE CASCADE,
    subscription_id text NOT NULL,
    version         integer,
    status          text NOT NULL CHECK (status IN ('sent', 'failed')),
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, subscription_id)
);
