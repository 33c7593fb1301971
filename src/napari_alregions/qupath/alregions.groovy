/*
 * alregions.groovy: region-based active learning for the open image, from QuPath's script editor.
 *
 * Shipped with napari-alregions (`alregions qupath-script > alregions.groovy`). Open an image,
 * set the settings below, then Run. For the open image it:
 *   1. creates the session (the first time) and adds the image to it;
 *   2. exports your annotations as GeoJSON (as File > Export objects as GeoJSON does);
 *   3. runs `alregions session import` and `retrain` on them (when the image has annotations),
 *      then `alregions session propose`;
 *   4. removes the proposals and priority tiles of its last run and imports the new ones:
 *      annotations classed "Proposal: <method>" and, once a model is trained, one tile per map
 *      cell with a "priority" measurement (Measure > Show measurement maps > priority).
 *
 * The command lines it runs (from the COMMANDS block below; [..] when the settings ask):
 *   alregions session new SESSION --exist-ok
 *   alregions session add SESSION IMAGE --name SLIDE --exist-ok
 *   alregions session import SESSION ANNOTATIONS --slide SLIDE [--class-map CLASS_MAP]
 *   alregions session retrain SESSION [--deep]
 *   alregions session propose SESSION --slide SLIDE --method METHOD --untrained-method random -l REGION_SIZE -k K --qupath PROPOSALS [--priority]
 *
 * To annotate a proposal: set its class to Region* (or remove its class), then draw your classes
 * (e.g. Tumor) inside it; what you leave unlabeled in a region is background. Delete proposals you
 * do not want. Run the script again: your regions and labels go into the session, the model is
 * retrained and new regions are proposed.
 *
 * Written from QuPath's source (v0.5.0 to v0.7.0 and main): QP.exportObjectsToGeoJson,
 * QP.importObjectsFromFile, QP.getTileObjects, PathObjectHierarchy.removeObjects,
 * ImageServer.getURIs. Not run inside QuPath by its authors: see README, "From QuPath".
 */

import java.nio.file.Paths

// ---- settings: edit these ------------------------------------------------------------------
// the alregions command; its full path when QuPath does not see your shell's PATH, e.g.
// '/home/me/miniforge3/envs/alregions/bin/alregions' or 'C:/Users/me/miniforge3/envs/alregions/Scripts/alregions.exe'
def ALREGIONS = 'alregions'
// the session folder; '' = 'alregions-session' in the QuPath project, or beside the image without a project
def SESSION = ''
def METHOD = 'adaptive'    // selector (`alregions suggest --method` lists them); random while no model is trained
def REGION_SIZE = 2048     // region side in level-0 px: a multiple of the session's map stride (128 by default)
def K = 5                  // regions to propose
def CLASS_MAP = ''         // QuPath class = session class, e.g. 'Stroma=background,Other=' ('Other=' skips Other)
def DEEP = false           // retrain the patch CNN (much slower) instead of the fast learner
def PRIORITY = true        // bring the priority map back as tiles with a 'priority' measurement
// ----------------------------------------------------------------------------------------------

// ---- the alregions command lines (tests/test_cli_session.py runs this block) ----
def COMMANDS = [
    'new':      ['session', 'new', '{session}', '--exist-ok'],
    'add':      ['session', 'add', '{session}', '{image}', '--name', '{slide}', '--exist-ok'],
    'import':   ['session', 'import', '{session}', '{annotations}', '--slide', '{slide}'],
    'retrain':  ['session', 'retrain', '{session}'],
    'propose':  ['session', 'propose', '{session}', '--slide', '{slide}', '--method', '{method}',
                 '--untrained-method', 'random', '-l', '{region_size}', '-k', '{k}', '--qupath', '{proposals}'],
    // added to the line above them when the settings ask
    'class_map': ['--class-map', '{class_map}'],
    'deep':      ['--deep'],
    'priority':  ['--priority'],
]
// ---- end of the command lines ----

def imageData = getCurrentImageData()
if (imageData == null)
    throw new IllegalStateException('alregions: open an image first')
def uris = imageData.getServer().getURIs()
if (uris.size() != 1 || uris.iterator().next().getScheme() != 'file')
    throw new IllegalStateException('alregions: the image must be one local file (its URIs: ' + uris + ')')
def image = Paths.get(uris.iterator().next()).toFile()
def slide = image.getName()
def session = SESSION ? new File(SESSION) :
        (getProject() != null ? new File(buildFilePath(PROJECT_BASE_DIR, 'alregions-session')) :
                new File(image.getParentFile(), 'alregions-session'))
def exchange = new File(session, 'qupath')
def stem = slide.replaceAll('[\\\\/:*?"<>|]', '_')
def values = [session: session.getPath(), image: image.getPath(), slide: slide,
              annotations: new File(exchange, stem + '.annotations.geojson').getPath(),
              proposals: new File(exchange, stem + '.proposals.geojson').getPath(),
              method: METHOD, region_size: REGION_SIZE, k: K, class_map: CLASS_MAP]

// a command line of the block above, its {placeholders} filled in
def fill = { String key ->
    COMMANDS[key].collect { String part ->
        if (!(part.startsWith('{') && part.endsWith('}')))
            return part
        def value = values[part.substring(1, part.length() - 1)]
        if (value == null)
            throw new IllegalArgumentException('alregions: no value for ' + part)
        return value.toString()
    }
}

// run alregions, its output in QuPath's log; stop the script on an error (the last line says why)
def alregions = { List<String> args ->
    def command = [ALREGIONS] + args
    println '> ' + command.join(' ')
    def process
    try {
        process = new ProcessBuilder(command).redirectErrorStream(true).start()
    } catch (IOException e) {
        throw new IllegalStateException('alregions: cannot run ' + ALREGIONS + ' (' + e.getMessage() +
                '): set ALREGIONS at the top of the script to its full path')
    }
    def last = ''
    process.getInputStream().eachLine('UTF-8') { String line ->
        def shown = line.split('\r')  // a progress bar redraws its line: keep what it last shows
        line = shown ? shown[-1] : ''
        println line
        if (line.trim())
            last = line
    }
    int rc = process.waitFor()
    if (rc != 0)
        throw new IllegalStateException('alregions ' + args[0] + ' ' + args[1] + ' failed (exit status ' + rc + '): ' + last)
}

alregions(fill('new'))
alregions(fill('add'))
exchange.mkdirs()

def isProposal = { p -> p.getPathClass() != null && p.getPathClass().getBaseClass().getName() == 'Proposal' }
def mine = getAnnotationObjects().findAll { !isProposal(it) }
if (mine.isEmpty()) {
    println 'alregions: no annotations on this image yet: proposing regions only'
} else {
    exportObjectsToGeoJson(mine, values.annotations, 'FEATURE_COLLECTION')
    alregions(fill('import') + (CLASS_MAP ? fill('class_map') : []))
    alregions(fill('retrain') + (DEEP ? fill('deep') : []))
}
alregions(fill('propose') + (PRIORITY ? fill('priority') : []))

// the new proposals and priority tiles replace those of the last run
def hierarchy = getCurrentHierarchy()
def old = getAnnotationObjects().findAll { isProposal(it) } +
        getTileObjects().findAll { it.getMeasurements().containsKey('priority') }
hierarchy.removeObjects(old, true)
importObjectsFromFile(values.proposals)
fireHierarchyUpdate()
println 'alregions: proposals imported from ' + values.proposals
