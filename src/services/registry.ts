// The DebVisor v1 services, in one list: the server registers, reflects and
// polices exactly these.
import type { DescService } from '@bufbuild/protobuf';
import { AccessService } from '../gen/debvisor/v1/access_pb.js';
import { EventService } from '../gen/debvisor/v1/event_pb.js';
import { ImageService } from '../gen/debvisor/v1/image_pb.js';
import { MigrationService } from '../gen/debvisor/v1/migration_pb.js';
import { NodeService } from '../gen/debvisor/v1/node_pb.js';
import { OperationService } from '../gen/debvisor/v1/operation_pb.js';
import { StorageService } from '../gen/debvisor/v1/storage_pb.js';
import { VmService } from '../gen/debvisor/v1/vm_pb.js';

export const API_SERVICES: readonly DescService[] = [
  AccessService,
  NodeService,
  VmService,
  MigrationService,
  StorageService,
  ImageService,
  OperationService,
  EventService,
];
