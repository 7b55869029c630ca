CREATE TABLE "alerts" (
	"id" text PRIMARY KEY NOT NULL,
	"kind" text NOT NULL,
	"severity" text NOT NULL,
	"subject" text NOT NULL,
	"message" text NOT NULL,
	"state" text DEFAULT 'active' NOT NULL,
	"raised_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"resolved_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "protection_groups" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"policy" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "protection_groups_name_unique" UNIQUE("name")
);
--> statement-breakpoint
CREATE TABLE "quarantined_chunks" (
	"id" text PRIMARY KEY NOT NULL,
	"hash" text NOT NULL,
	"pack" text NOT NULL,
	"offset" bigint NOT NULL,
	"stored_size" integer NOT NULL,
	"reason" text NOT NULL,
	"quarantined_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "schedule_marks" (
	"key" text PRIMARY KEY NOT NULL,
	"last_slot_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
ALTER TABLE "jobs" DROP CONSTRAINT "jobs_datasource_id_datasources_id_fk";
--> statement-breakpoint
DROP INDEX "jobs_state";--> statement-breakpoint
ALTER TABLE "jobs" ALTER COLUMN "agent_id" DROP NOT NULL;--> statement-breakpoint
ALTER TABLE "chunks" ADD COLUMN "touched_at" timestamp with time zone DEFAULT now() NOT NULL;--> statement-breakpoint
ALTER TABLE "datasources" ADD COLUMN "group_id" text;--> statement-breakpoint
ALTER TABLE "datasources" ADD COLUMN "replica_state" text DEFAULT 'consistent' NOT NULL;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "trigger" text DEFAULT 'manual' NOT NULL;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "group_id" text;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "result" jsonb;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "run_after" timestamp with time zone DEFAULT now() NOT NULL;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "deadline" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "lease_owner" text;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "lease_until" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "retries" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "max_retries" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "recovery_points" ADD COLUMN "origin" text DEFAULT 'manual' NOT NULL;--> statement-breakpoint
ALTER TABLE "recovery_points" ADD COLUMN "status" text DEFAULT 'ok' NOT NULL;--> statement-breakpoint
ALTER TABLE "recovery_points" ADD COLUMN "verified_at" timestamp with time zone;--> statement-breakpoint
CREATE UNIQUE INDEX "alerts_one_active" ON "alerts" USING btree ("kind","subject") WHERE state = 'active';--> statement-breakpoint
CREATE INDEX "alerts_state" ON "alerts" USING btree ("state","raised_at");--> statement-breakpoint
ALTER TABLE "datasources" ADD CONSTRAINT "datasources_group_id_protection_groups_id_fk" FOREIGN KEY ("group_id") REFERENCES "public"."protection_groups"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "jobs" ADD CONSTRAINT "jobs_group_id_protection_groups_id_fk" FOREIGN KEY ("group_id") REFERENCES "public"."protection_groups"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "jobs" ADD CONSTRAINT "jobs_datasource_id_datasources_id_fk" FOREIGN KEY ("datasource_id") REFERENCES "public"."datasources"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "datasources_group" ON "datasources" USING btree ("group_id");--> statement-breakpoint
CREATE INDEX "jobs_datasource" ON "jobs" USING btree ("datasource_id","created_at");--> statement-breakpoint
CREATE UNIQUE INDEX "jobs_one_running_backup" ON "jobs" USING btree ("datasource_id") WHERE state = 'running' and type in ('backup', 'consistency-check');--> statement-breakpoint
CREATE INDEX "jobs_state" ON "jobs" USING btree ("state","run_after");