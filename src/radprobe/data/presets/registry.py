"""Preset metadata: what each public dataset looks like on disk and which conventions radprobe applies.

Kept free of heavy imports (and of ``radprobe.data.spec``), because the spec parser consults it to
accept ``<preset>:<root_dir>`` schemes. The readers live in the sibling modules named by ``module``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Options every preset accepts: intensity/reading options shared with the generic schemes, plus the
# paper switch and split overrides (patients= only where the dataset has no official split).
READ_OPTIONS = {
    "name": "dataset name (default: the preset name)",
    "window": "intensity window <center>,<width> or a preset (lung, soft, ...)",
    "norm": "auto|dtype|minmax|percentile intensity scaling",
    "bits": "integer images are divided by 2**bits - 1",
    "slices": "1: one 2D sample per slice of each volume",
    "axis": "slicing axis of volumes (default 2, axial)",
    "orient": "canonical (RAS+ display planes, default) | stored (NIfTI array as stored, no reorientation)",
    "allow_outside_root": "1: read files that resolve (symlinks) outside the dataset root",
}
PAPER_OPTION = {"paper": "1: the conventions of Baharoon et al. (arXiv 2312.02366), see 'paper'"}
FRACTIONS_OPTION = {
    "fractions": "train,val,test shares (or image counts, normalised) for splits radprobe carves",
}
PATIENTS_OPTION = {"patients": "train,val,test patient counts, e.g. 69,23,46 (exact, seeded, stratified)"}
CARVED = {**FRACTIONS_OPTION, **PATIENTS_OPTION}
SPLIT_OPTION = {
    "split": "paper: the train/val/test cases of the paper's released code (what paper=1 sets); empty: "
    "radprobe's rule",
}
SPLIT_NOTE = (
    "Splits radprobe carves are patient-level, stratified, seeded (load_dataset(split_seed=)) and saved "
    "to a split file, so they stay fixed."
)


@dataclass(frozen=True)
class PresetInfo:
    """One preset. ``paper`` is the option string that reproduces the paper's setting."""

    name: str
    title: str
    task: str
    modality: str
    ndim: int | str  # "per set" for collections (MedMNIST)
    layout: str
    labels: str
    split: str
    resolution: int
    metric: str
    citation: str
    url: str
    module: str
    example: str
    options: dict[str, str] = field(default_factory=dict)
    paper: str = ""
    notes: str = ""

    def allowed_options(self) -> frozenset[str]:
        return frozenset(self.options)

    def describe(self) -> dict[str, object]:
        """Everything a user needs to lay the data out and know what radprobe will do with it."""
        return {
            "name": self.name,
            "spec": f"{self.name}:<root_dir>",
            "example": self.example,
            "title": self.title,
            "task": self.task,
            "modality": self.modality,
            "ndim": self.ndim,
            "description": self.title,
            "source": "preset",
            "format": self.layout.split(";")[0],
            "layout": self.layout,
            "labels": self.labels,
            "split_rule": f"{self.split} {SPLIT_NOTE}",
            "resolution": self.resolution,
            "metric": self.metric,
            "citation": self.citation,
            "url": self.url,
            "options": dict(self.options),
            "paper": self.paper,
            "notes": self.notes,
        }


_CLS_READ = {k: v for k, v in READ_OPTIONS.items() if k not in ("slices", "axis", "orient")}
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHEXPERT_ALL = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
BTCV_ORGANS = (
    "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland", "left adrenal gland",
)  # fmt: skip
AMOS_ORGANS = (
    "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach", "aorta",
    "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
    "prostate/uterus",
)  # fmt: skip

PRESETS: dict[str, PresetInfo] = {
    p.name: p
    for p in (
        PresetInfo(
            name="nih-cxr14",
            title="NIH ChestX-ray14: 112,120 frontal chest X-rays, 30,805 patients, 14 text-mined findings",
            task="multilabel",
            modality="xray",
            ndim=2,
            layout=(
                "<root>/Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv) + train_val_list.txt + "
                "test_list.txt; images in <root>/images/*.png or <root>/images_001/images/*.png ... "
                "images_012/images/*.png (Kaggle); CSV columns 'Image Index', 'Finding Labels' "
                "(|-separated, 'No Finding'), 'Patient ID'"
            ),
            labels=", ".join(NIH_FINDINGS) + "; + 'No Finding' as a 15th output with no_finding=1",
            split=(
                "test = official test_list.txt (25,596 images); train_val_list.txt is train, with val "
                "carved from it at patient level (12.5% of its patients at the default fractions), or "
                "val=last: the last 10,002 entries of train_val_list.txt (the paper's rule)."
            ),
            resolution=224,
            metric="macro AUROC over the outputs (15 in the paper)",
            citation=(
                "Wang et al., ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks, CVPR 2017"
            ),
            url="https://nihcc.app.box.com/v/ChestXray-NIHCC",
            module="radprobe.data.presets.chest:index_nih",
            example="nih-cxr14:/data/NIH?paper=1",
            options={
                **_CLS_READ,
                **PAPER_OPTION,
                **FRACTIONS_OPTION,
                "no_finding": "1: add 'No Finding' as a 15th output (the paper's setting)",
                "val": "patient (default: carve val from train_val at patient level) | last | last:<n>",
            },
            paper="no_finding=1&val=last",
            notes=(
                "A few NIH PNGs are RGBA; they are read as RGB (alpha dropped). val=last follows the list "
                "order, so a patient whose images straddle the boundary is in train and val; check_dataset "
                "reports such a patient (test stays patient-disjoint)."
            ),
        ),
        PresetInfo(
            name="chexpert",
            title="CheXpert (Stanford): 224,316 chest X-rays of 65,240 patients, 14 observations",
            task="multilabel",
            modality="xray",
            ndim=2,
            layout=(
                "<root>/train.csv + valid.csv (+ test.csv or test_labels.csv when present) + train/, "
                "valid/, test/ patientNNNNN/studyN/viewN_{frontal,lateral}.jpg; <root> is "
                "CheXpert-v1.0-small or CheXpert-v1.0 (the CSV paths may start with that folder name)"
            ),
            labels=(
                "competition (default): " + ", ".join(CHEXPERT_COMPETITION) + "; labels=all: the 14 "
                "observations. Cells: 1.0 positive, 0.0 negative, blank not mentioned (= 0), -1.0 "
                "uncertain -> uncertain= policy"
            ),
            split=(
                "train = train.csv, val = valid.csv, test = the test CSV when present, else carved from "
                "train at patient level (the paper's 191,027 / 202 / 518 frontal images need the test CSV)."
            ),
            resolution=224,
            metric="macro AUROC over the 5 competition labels",
            citation=(
                "Irvin et al., CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels, AAAI 2019"
            ),
            url="https://stanfordmlgroup.github.io/competitions/chexpert/",
            module="radprobe.data.presets.chest:index_chexpert",
            example="chexpert:/data/CheXpert-v1.0-small?uncertain=zeros&frontal=1",
            options={
                **_CLS_READ,
                **PAPER_OPTION,
                **FRACTIONS_OPTION,
                "uncertain": (
                    "zeros|ones|ignore: -1 labels become 0 (U-Zeros), 1 (U-Ones) or stay -1 (U-Ignore, to "
                    "be masked by the consumer). Default zeros, with a warning; recorded in the digest"
                ),
                "frontal": "1: frontal views only (the paper's setting)",
                "labels": "competition (default, 5 labels) | all (14 observations)",
                "uncertain_output": (
                    "1: a sixth output 'Uncertain', 1 where any label was -1 before the uncertain= policy "
                    "(the paper's setting)"
                ),
            },
            paper="frontal=1&uncertain=zeros&uncertain_output=1",
        ),
        PresetInfo(
            name="sars-cov-2-ct",
            title="SARS-CoV-2 CT (Soares et al.): CT slice images in per-patient folders, COVID vs not",
            task="binary",
            modality="ct",
            ndim=3,
            layout=(
                "<root>/<class>/<patient>/<slice>.png (one optional wrapper folder, e.g. New_Data_CoV2); "
                "class folders COVID/Covid/covid-19 (positive) and non-COVID/Healthy/Others/Normal "
                "(negative); slices stacked in natural order (2.png before 10.png)"
            ),
            labels="not COVID, COVID (labels=source keeps the class folders as classes)",
            split="no official split: carved at patient level; paper=1 -> exactly 90 / 50 / 70 patients.",
            resolution=224,
            metric="AUROC (slice features averaged per patient in the paper)",
            citation=(
                "Soares et al., SARS-CoV-2 CT-scan dataset: A large dataset of real patients CT scans for "
                "SARS-CoV-2 identification, medRxiv 2020"
            ),
            url="https://www.kaggle.com/datasets/plameneduardo/a-covid-multiclass-dataset-of-ct-scans",
            module="radprobe.data.presets.covid_ct:index_sars",
            example="sars-cov-2-ct:/data/SARS-CoV-2?paper=1",
            options={
                **READ_OPTIONS,
                **PAPER_OPTION,
                **CARVED,
                "labels": "binary (default: COVID vs not) | source (one class per class folder)",
            },
            paper="patients=90,50,70",
            notes="The volume-level (slice-averaging) heads are not part of the dataset layer.",
        ),
        PresetInfo(
            name="brain-tumor-mri",
            title="Figshare brain tumour MRI (Cheng et al.): 3,064 T1-CE slices, 233 patients, 3 tumours",
            task="multiclass",
            modality="mri",
            ndim=2,
            layout=(
                "<root>/**/<n>.mat (MATLAB v7.3 / HDF5; e.g. brainTumorDataPublic_1-766/1.mat), each "
                "with struct cjdata: image, label (1 meningioma, 2 glioma, 3 pituitary), PID, tumorBorder, "
                "tumorMask; cvind.mat is ignored"
            ),
            labels="meningioma, glioma, pituitary (task=segmentation: background, tumor, from tumorMask)",
            split="no official split: carved by cjdata.PID (patient); paper=1 -> 1,344 / 718 / 1,002 images.",
            resolution=224,
            metric="accuracy and macro AUROC",
            citation=(
                "Cheng et al., Enhanced Performance of Brain Tumor Classification via Tumor Region "
                "Augmentation and Partition, PLoS ONE 2015"
            ),
            url="https://doi.org/10.6084/m9.figshare.1512427",
            module="radprobe.data.presets.brain_tumor:index_brain_tumor",
            example="brain-tumor-mri:/data/figshare-brain-tumor?paper=1",
            options={
                **_CLS_READ,
                **PAPER_OPTION,
                **CARVED,
                "task": "classification (default) | segmentation (the tumour mask)",
            },
            paper="fractions=1344,718,1002",
        ),
        PresetInfo(
            name="montgomery",
            title="Montgomery County chest X-rays: 138 images with manual left/right lung masks",
            task="segmentation",
            modality="xray",
            ndim=2,
            layout=(
                "<root>/CXR_png/MCUCXR_XXXX_Y.png + <root>/ManualMask/leftMask/<same name> + "
                "<root>/ManualMask/rightMask/<same name> (<root> = MontgomerySet)"
            ),
            labels="background, left lung, right lung (lungs=merged: background, lung)",
            split=(
                "no official split: carved per image (= patient); paper=1 (split=paper) -> the released "
                "code's 69 / 23 / 46 images, by position in the sorted CXR_png listing."
            ),
            resolution=448,
            metric="mean Dice and IoU over the lung classes (background excluded)",
            citation=(
                "Jaeger et al., Two public chest X-ray datasets for computer-aided screening of pulmonary "
                "diseases, Quant Imaging Med Surg 2014"
            ),
            url="https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets",
            module="radprobe.data.presets.lungs:index_montgomery",
            example="montgomery:/data/MontgomerySet?paper=1",
            options={
                **_CLS_READ,
                **PAPER_OPTION,
                **CARVED,
                **SPLIT_OPTION,
                "lungs": "separate (default: left and right lung classes) | merged (one lung class)",
            },
            paper="split=paper",
        ),
        PresetInfo(
            name="shenzhen",
            title="Shenzhen chest X-rays: 566 of 662 images with manual lung masks",
            task="segmentation",
            modality="xray",
            ndim=2,
            layout=(
                "<root>/CXR_png/CHNCXR_XXXX_Y.png + <root>/mask/ (or masks/) CHNCXR_XXXX_Y_mask.png; images "
                "without a mask are left out"
            ),
            labels="background, lung",
            split=(
                "no official split: carved per image (= patient); paper=1 (split=paper) -> the released "
                "code's 361 / 91 / 114 masked images, by position in the sorted CXR_png listing."
            ),
            resolution=448,
            metric="mean Dice and IoU over the lung class (background excluded)",
            citation=(
                "Jaeger et al., Quant Imaging Med Surg 2014; masks: Stirenko et al., Chest X-ray analysis "
                "of tuberculosis by deep learning with segmentation and augmentation, ELNANO 2018"
            ),
            url="https://www.kaggle.com/datasets/yoctoman/shcxr-lung-mask",
            module="radprobe.data.presets.lungs:index_shenzhen",
            example="shenzhen:/data/ChinaSet_AllFiles?paper=1",
            options={**_CLS_READ, **PAPER_OPTION, **CARVED, **SPLIT_OPTION},
            paper="split=paper",
        ),
        PresetInfo(
            name="btcv",
            title="BTCV (Multi-Atlas Labeling Beyond the Cranial Vault): 30 labelled abdominal CT, 13 organs",
            task="segmentation",
            modality="ct",
            ndim=3,
            layout=(
                "<root>/RawData/Training/img/img00XX.nii.gz + label/label00XX.nii.gz (also <root> = RawData "
                "or Training); or <root>/imagesTr + labelsTr with a dataset json (dataset_0.json / "
                "dataset.json, 'training'/'validation' lists)"
            ),
            labels="background, " + ", ".join(BTCV_ORGANS),
            split=(
                "json 'training'/'validation' lists when present (test then carved from training), else "
                "all carved at patient (= volume) level. paper=1 (split=paper): train = the 15 even-numbered "
                "volumes, test = the 15 odd-numbered (the released code's), val carved from train."
            ),
            resolution=448,
            metric="mean Dice over the 13 organs",
            citation="Landman et al., MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault challenge",
            url="https://www.synapse.org/#!Synapse:syn3193805",
            module="radprobe.data.presets.abdomen:index_btcv",
            example="btcv:/data/BTCV?window=soft",
            options={**READ_OPTIONS, **PAPER_OPTION, **CARVED, **SPLIT_OPTION},
            # The released slicing: the stored array (no reorientation), then torch.clamp(-1024, 600);
            # the window is that clamp plus a linear map, which the per-slice min-max after Resize cancels.
            paper="split=paper&window=-212,1624&orient=stored",
        ),
        PresetInfo(
            name="amos",
            title="AMOS 2022: abdominal CT (500) and MRI (100) with 15 organs",
            task="segmentation",
            modality="ct",
            ndim=3,
            layout=(
                "<root>/dataset.json + imagesTr/ labelsTr/ imagesVa/ labelsVa/ (imagesTs/ unlabelled) "
                "amos_XXXX.nii.gz; ids > 500 are MRI"
            ),
            labels="background, " + ", ".join(AMOS_ORGANS) + " (names taken from dataset.json)",
            split=(
                "train = dataset.json 'training', val = 'validation'; test carved from training. paper=1 "
                "(split=paper): the released code's 80 / 20 / 50 of the 300 labelled CT volumes, by position."
            ),
            resolution=448,
            metric="mean Dice over the 15 organs",
            citation="Ji et al., AMOS: A Large-Scale Abdominal Multi-Organ Benchmark, NeurIPS 2022",
            url="https://amos22.grand-challenge.org/",
            module="radprobe.data.presets.abdomen:index_amos",
            example="amos:/data/amos22?subset=ct",
            options={
                **READ_OPTIONS,
                **PAPER_OPTION,
                **FRACTIONS_OPTION,
                **SPLIT_OPTION,
                "subset": "ct (default; ids <= 500) | mri (ids > 500) | all",
            },
            # The released slicing: the stored array (no reorientation), then torch.clamp(-1024, 600);
            # the window is that clamp plus a linear map, which the per-slice min-max after Resize cancels.
            paper="split=paper&window=-212,1624&orient=stored",
        ),
        PresetInfo(
            name="msd",
            title="Medical Segmentation Decathlon: any task via its dataset.json (Heart, Spleen, ...)",
            task="segmentation",
            modality="ct/mri (per task)",
            ndim=3,
            layout=(
                "<root>/TaskNN_Name/dataset.json + imagesTr/*.nii.gz + labelsTr/*.nii.gz (<root> may be the "
                "task folder itself; otherwise name it with task=9 or task=Spleen); ._* files are ignored"
            ),
            labels="from dataset.json 'labels' (Heart: background, left atrium)",
            split=(
                "dataset.json 'training' (its test is unlabelled), carved at patient (= volume) level. "
                "paper=1 (split=paper, Task02_Heart only): 12 / 4 / 4 volumes, inferred from the released "
                "code."
            ),
            resolution=448,
            metric="mean Dice over the foreground labels",
            citation="Antonelli et al., The Medical Segmentation Decathlon, Nature Communications 2022",
            url="http://medicaldecathlon.com/",
            module="radprobe.data.presets.abdomen:index_msd",
            example="msd:/data/Task02_Heart",
            options={
                **READ_OPTIONS,
                **PAPER_OPTION,
                **CARVED,
                "task": "task number or name when <root> holds several TaskNN_* folders (e.g. 9, Spleen)",
                "channel": "modality index of 4D (multi-modal) tasks, e.g. BrainTumour (default 0)",
                **SPLIT_OPTION,
            },
            # The released msd_heart.py: the stored array, no clamp (MRI); min-max per volume is linear,
            # so the per-slice min-max after Resize cancels it (the default percentile clipping would not).
            paper="split=paper&norm=minmax&orient=stored",
        ),
        PresetInfo(
            name="medmnist",
            title="MedMNIST v2 / MedMNIST+: 12 2D (28-224 px) and 6 3D (28-64 voxel) standardised sets",
            task="per set",
            modality="per set",
            ndim="per set",
            layout=(
                "<file>.npz named <set>.npz (28) or <set>_<size>.npz (64/128/224; 3D: 64) with train_/val_/"
                "test_images and _labels; or <dir>?name=<set>&size=<n>"
            ),
            labels="the set's published label names (ChestMNIST: 14 multi-label findings)",
            split="the published train/val/test arrays.",
            resolution=224,
            metric="ACC and AUC (ChestMNIST: AUC only; accuracy is meaningless there)",
            citation=(
                "Yang et al., MedMNIST v2, Scientific Data 2023; Doerrich et al., Rethinking model "
                "prototyping through the MedMNIST+ dataset collection, Sci. Rep. 2025"
            ),
            url="https://zenodo.org/records/10519652",
            module="radprobe.data.presets.medmnist:index_medmnist",
            example="medmnist:/data?name=pneumoniamnist&size=224",
            options={
                **_CLS_READ,
                **PAPER_OPTION,
                "name": "set name, e.g. chestmnist, organmnist3d (default: from the file name)",
                "size": "28|64|128|224 (3D: 28|64); default: from the file name",
                "pad": "zero-pad 2D images centrally to this size, e.g. 224 (MedMNIST+; no resizing)",
            },
            paper="pad=224",
            notes="download_medmnist(name, size, root) fetches a file with its md5 when a network exists.",
        ),
    )
}
